//! Gives the shared library its soname, carrying the ABI major version.

fn main() {
    // Keep in step with VSTOR_ABI_VERSION in src/lib.rs.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvstor.so.1");
}
