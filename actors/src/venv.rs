//! The plugins' virtual environment: `plugins.venv`, else `VIRTUAL_ENV`. Its
//! site-packages take the place of the embedded interpreter's own, as when
//! Python runs from that environment, so a plugin's third-party packages live
//! apart from the interpreter's.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pyo3::exceptions::PyModuleNotFoundError;
use pyo3::prelude::*;
use pyo3::types::PyList;

/// The environment in use (None: the interpreter's own site-packages), once
/// the interpreter has started.
static IN_USE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// `plugins.venv` when set, else `VIRTUAL_ENV`: (path, where it came from).
fn choose(setting: &Path) -> Option<(PathBuf, &'static str)> {
    if !setting.as_os_str().is_empty() {
        return Some((setting.to_path_buf(), "plugins.venv"));
    }
    std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()).map(|v| (PathBuf::from(v), "VIRTUAL_ENV"))
}

/// Make the chosen environment's packages importable, and log which
/// interpreter and environment plugins run with. An environment made from
/// another Python version (its packages' binary modules would not load) or
/// that is not one is refused.
pub fn activate(py: Python<'_>, setting: &Path) -> Result<(), String> {
    let info = py.version_info();
    let (major, minor) = (info.major, info.minor);
    let python = format!("Python {major}.{minor}.{}", info.patch);
    let base = py.import("sys").and_then(|sys| sys.getattr("base_prefix")?.extract::<String>()).map_err(|e| crate::failure::describe(py, &e))?;
    let Some((chosen, source)) = choose(setting) else {
        log::info!("plugins run on {python} ({base}) with its own site-packages: no virtual environment (plugins.venv, VIRTUAL_ENV)");
        let _ = IN_USE.set(None);
        return Ok(());
    };
    let refuse = |why: String| format!("{source} {}: {why}", chosen.display());
    let remake = format!("make it with python{major}.{minor} -m venv {}", chosen.display());
    let dir = chosen.canonicalize().map_err(|e| refuse(format!("{e}; {remake}")))?;
    let cfg = std::fs::read_to_string(dir.join("pyvenv.cfg")).map_err(|_| refuse(format!("not a virtual environment (no pyvenv.cfg); {remake}")))?;
    let made_with = setting_of(&cfg, "version").or_else(|| setting_of(&cfg, "version_info")).unwrap_or("an unknown version");
    let wanted = format!("{major}.{minor}");
    if made_with.split('.').take(2).collect::<Vec<_>>().join(".") != wanted {
        return Err(refuse(format!("made with Python {made_with}, but luna-matcher embeds {python}; {remake} --clear")));
    }
    let site = dir.join(format!("lib/python{wanted}/site-packages"));
    if !site.is_dir() {
        return Err(refuse(format!("{} is missing; {remake} --clear", site.display())));
    }
    let system = setting_of(&cfg, "include-system-site-packages") == Some("true");
    use_site_packages(py, &site, system).map_err(|e| refuse(crate::failure::describe(py, &e)))?;
    log::info!("plugins run on {python} ({base}) with the virtual environment {} (from {source})", dir.display());
    let _ = IN_USE.set(Some(dir));
    Ok(())
}

/// A `key = value` line of pyvenv.cfg.
fn setting_of<'a>(cfg: &'a str, key: &str) -> Option<&'a str> {
    cfg.lines().filter_map(|l| l.split_once('=')).find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim())
}

/// What `site` does at start-up in a virtual environment: its site-packages
/// (with their .pth files) instead of the base's, or before them when the
/// environment includes the system's packages. `sys.prefix` stays the
/// interpreter's own: the interpreter is the embedded one, not the venv's.
fn use_site_packages(py: Python<'_>, site_packages: &Path, system: bool) -> PyResult<()> {
    let sys = py.import("sys")?;
    let site = py.import("site")?;
    let mut base: Vec<String> = site.call_method0("getsitepackages")?.extract()?;
    base.push(site.call_method0("getusersitepackages")?.extract()?);
    let path = sys.getattr("path")?.cast_into::<PyList>()?;
    let (removed, kept): (Vec<Bound<PyAny>>, Vec<Bound<PyAny>>) = path.iter().partition(|entry| entry.extract::<String>().is_ok_and(|e| base.contains(&e)));
    sys.setattr("path", PyList::new(py, kept)?)?;
    site.call_method1("addsitedir", (site_packages.display().to_string(),))?;
    if system {
        sys.getattr("path")?.call_method1("extend", (PyList::new(py, removed)?,))?;
    }
    Ok(())
}

/// For an import of a package that is not installed (ModuleNotFoundError,
/// not a plugin's own module): which one, and how to install it where
/// plugins import from.
pub fn install_hint(py: Python<'_>, error: &PyErr) -> Option<String> {
    if !error.is_instance_of::<PyModuleNotFoundError>(py) {
        return None;
    }
    let name: String = error.value(py).getattr("name").ok()?.extract().ok()?;
    let package = name.split('.').next().filter(|top| *top != "plugins")?;
    let info = py.version_info();
    Some(match IN_USE.get()? {
        Some(venv) => format!(
            "; '{package}' is not installed in the plugins' virtual environment {}: {}/bin/python -m pip install {package} (or add it to plugins/requirements.txt)",
            venv.display(),
            venv.display()
        ),
        None => format!(
            "; '{package}' is not installed and no virtual environment is in use: python{}.{} -m venv .venv && .venv/bin/python -m pip install {package}, then set plugins.venv or VIRTUAL_ENV to .venv",
            info.major, info.minor
        ),
    })
}
