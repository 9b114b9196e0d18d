// The binary embeds CPython: link it with an rpath to the libpython it was
// built against, or it silently loads whichever libpython the loader finds.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
