//! The plugins' virtual environment, with the real binary and real venvs made
//! by the interpreter it embeds: a package that exists only in a throwaway
//! venv is importable when VIRTUAL_ENV or plugins.venv names it, a missing one
//! says how to install it, and a venv of another Python is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The interpreter the binary embeds (PYO3_PYTHON in .cargo/config.toml).
fn python() -> String {
    std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A fresh venv; with `package`, a module of that name in its site-packages
/// whose VALUE names the venv.
fn venv(root: &Path, name: &str, package: Option<&str>) -> PathBuf {
    let dir = root.join(name);
    run(python(), &["-m", "venv", "--without-pip", dir.to_str().unwrap()]);
    if let Some(package) = package {
        let site = run(dir.join("bin/python"), &["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]);
        std::fs::create_dir_all(Path::new(&site).join(package)).unwrap();
        std::fs::write(Path::new(&site).join(package).join("__init__.py"), format!("VALUE = 'from {name}'\n")).unwrap();
    }
    dir.canonicalize().unwrap()
}

const PACKAGE: &str = "luna_venv_probe";

/// A plugin that imports PACKAGE and shows what it got and where it looked.
const PROBE: &str = r#"
import sys

import luna_venv_probe
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, pluginHTTPResponse


class Probe(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/probe", self.answer, methods={"get"})

    async def answer(self, request):
        return pluginHTTPResponse(body={"value": luna_venv_probe.VALUE, "file": luna_venv_probe.__file__, "path": sys.path})
"#;

const ACTIVE: &str = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"probe\"]\n";

/// The embedded interpreter's own site-packages directories.
fn base_site_packages() -> Vec<String> {
    serde_json::from_str(&run(python(), &["-c", "import json, site; print(json.dumps(site.getsitepackages() + [site.getusersitepackages()]))"])).unwrap()
}

fn probe(s: &Service) -> Value {
    s.ready();
    let r = s.call("GET", "/probe", None);
    assert_eq!(r.status, 200, "{}\n{}\n{}", String::from_utf8_lossy(&r.body), s.plugin("probe"), s.log());
    r.json()
}

#[test]
fn virtual_env_variable_makes_the_venv_packages_importable() {
    let tmp = tempfile::tempdir().unwrap();
    let env = venv(tmp.path(), "venv-a", Some(PACKAGE));
    let s = Service::spawn_with_env(&[("probe.py", PROBE)], ACTIVE, &[("VIRTUAL_ENV", env.to_str().unwrap())]);
    let answer = probe(&s);
    assert_eq!(answer["value"], "from venv-a");
    assert!(answer["file"].as_str().unwrap().starts_with(env.to_str().unwrap()), "{answer}");
    // The venv replaces the interpreter's own site-packages, as in a venv's python.
    let path: Vec<String> = serde_json::from_value(answer["path"].clone()).unwrap();
    for base in base_site_packages() {
        assert!(!path.contains(&base), "{base} in {path:?}");
    }
    let log = s.log();
    assert!(log.contains(&format!("with the virtual environment {} (from VIRTUAL_ENV)", env.display())), "{log}");
}

#[test]
fn plugins_venv_setting_wins_over_virtual_env() {
    let tmp = tempfile::tempdir().unwrap();
    let chosen = venv(tmp.path(), "venv-b", Some(PACKAGE));
    let other = venv(tmp.path(), "venv-other", Some(PACKAGE));
    let config = format!("{ACTIVE}venv = \"{}\"\n", chosen.display());
    let s = Service::spawn_with_env(&[("probe.py", PROBE)], &config, &[("VIRTUAL_ENV", other.to_str().unwrap())]);
    assert_eq!(probe(&s)["value"], "from venv-b");
    assert!(s.log().contains(&format!("with the virtual environment {} (from plugins.venv)", chosen.display())), "{}", s.log());
}

#[test]
fn system_site_packages_come_after_the_venv() {
    let tmp = tempfile::tempdir().unwrap();
    let env = venv(tmp.path(), "venv-c", Some(PACKAGE));
    let cfg = env.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("include-system-site-packages = false", "include-system-site-packages = true");
    std::fs::write(&cfg, text).unwrap();
    let s = Service::spawn_with_env(&[("probe.py", PROBE)], ACTIVE, &[("VIRTUAL_ENV", env.to_str().unwrap())]);
    let answer = probe(&s);
    let path: Vec<String> = serde_json::from_value(answer["path"].clone()).unwrap();
    let own = path.iter().position(|p| p.starts_with(env.to_str().unwrap())).expect("the venv's site-packages");
    let base = base_site_packages();
    let system = path.iter().position(|p| base.contains(p)).expect("the interpreter's site-packages");
    assert!(own < system, "{path:?}");
}

#[test]
fn missing_package_names_the_pip_command_for_the_venv_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let env = venv(tmp.path(), "venv-empty", None);
    let s = Service::spawn_with_env(&[("probe.py", PROBE)], ACTIVE, &[("VIRTUAL_ENV", env.to_str().unwrap())]);
    s.ready();
    let p = s.plugin("probe");
    assert_eq!(p["state"], "failed", "{p}");
    let error = p["last_error"].as_str().unwrap();
    let command = format!("{}/bin/python -m pip install {PACKAGE}", env.display());
    assert!(error.contains("ModuleNotFoundError: No module named 'luna_venv_probe'") && error.contains(&command), "{error}");
    assert!(s.log().contains(&command), "{}", s.log());
}

#[test]
fn missing_package_without_a_venv_says_how_to_make_one() {
    let s = Service::spawn_with_env(&[("probe.py", PROBE)], ACTIVE, &[("VIRTUAL_ENV", "")]);
    s.ready();
    let p = s.plugin("probe");
    assert_eq!(p["state"], "failed", "{p}");
    let error = p["last_error"].as_str().unwrap();
    assert!(error.contains("no virtual environment is in use") && error.contains(&format!(".venv/bin/python -m pip install {PACKAGE}")), "{error}");
    assert!(s.log().contains("no virtual environment (plugins.venv, VIRTUAL_ENV)"), "{}", s.log());
}

/// Start the binary with one plugin and `env`, expecting it to stop: its exit code and output.
fn refused(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("plugins/probe.py"), PROBE).unwrap();
    let config = format!("{ACTIVE}directory = \"{}\"\n", dir.path().join("plugins").display());
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = std::fs::File::create(dir.path().join("out.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_luna-matcher"))
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .args(["--port", &free_port().to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .envs(env.iter().copied())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the service started with a wrong venv: {}", std::fs::read_to_string(dir.path().join("out.log")).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(dir.path().join("out.log")).unwrap())
}

#[test]
fn venv_of_another_python_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A venv as Python 3.9 leaves it: its version in pyvenv.cfg, lib/python3.9.
    let env = venv(tmp.path(), "venv-39", Some(PACKAGE));
    let cfg = env.join("pyvenv.cfg");
    let text: String = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .map(|l| if l.starts_with("version") { "version = 3.9.18\n".to_owned() } else { format!("{l}\n") })
        .collect();
    std::fs::write(&cfg, text).unwrap();
    let lib = std::fs::read_dir(env.join("lib")).unwrap().next().unwrap().unwrap().path();
    std::fs::rename(lib, env.join("lib/python3.9")).unwrap();
    let (code, out) = refused(&[("VIRTUAL_ENV", env.to_str().unwrap())]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {out}");
    assert!(out.contains(&format!("VIRTUAL_ENV {}: made with Python 3.9.18, but luna-matcher embeds Python 3.", env.display())), "{out}");
    assert!(out.contains("-m venv") && out.contains("--clear"), "{out}");

    let (code, out) = refused(&[("VIRTUAL_ENV", tmp.path().to_str().unwrap())]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {out}");
    assert!(out.contains("not a virtual environment (no pyvenv.cfg)"), "{out}");
}
