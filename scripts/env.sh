# Sourced by the scripts. pyo3 builds against `python3` (PYO3_PYTHON in
# .cargo/config.toml); the packages the example plugins import go into that
# same interpreter's site-packages (a distribution's own Python marks itself
# externally managed: then pip is told to install anyway).
install_plugin_requirements() {
  local pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r plugins/requirements.txt)
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
}
