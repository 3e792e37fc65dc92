//! Records libtorch's library folder as an rpath of this package's test,
//! example and bench binaries, so they run without `LD_LIBRARY_PATH`.

fn main() {
    // torch-sys (links = "tch") exports the folder it linked against.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
