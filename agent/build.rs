//! Builds the XDP object from `ebpf/` with Debian's rustc (which ships a precompiled `core`
//! for bpfel-unknown-none) and bpf-linker, so a plain `cargo build` builds everything.
//! See docs/toolchain.md for why this is not build-std.
use std::{env, path::PathBuf, process::Command};

const SETUP_HINT: &str = "run `cargo xtask setup` (installs rustc-web, libstd-rust-web-dev-bpf, llvm-22-dev and bpf-linker)";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("ebpf-target");

    println!("cargo:rerun-if-changed={}", ebpf_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("common/src").display()
    );
    println!("cargo:rerun-if-env-changed=PORTCULLIS_BPF_RUSTC");

    let rustc = env::var("PORTCULLIS_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    if !PathBuf::from(&rustc).exists()
        || !PathBuf::from("/usr/lib/rustlib/bpfel-unknown-none").exists()
    {
        panic!(
            "the eBPF toolchain is missing ({rustc} or its bpfel-unknown-none core): {SETUP_HINT}"
        );
    }
    let home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    let linker_in_path = Command::new("bpf-linker").arg("--version").output().is_ok();
    let mut path = env::var("PATH").unwrap_or_default();
    if !linker_in_path {
        if home.join("bin/bpf-linker").exists() {
            path = format!("{}:{path}", home.join("bin").display());
        } else {
            panic!("bpf-linker is not installed: {SETUP_HINT}");
        }
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", env::var("HOME").unwrap_or_default())
        .env("CARGO_HOME", &home)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f"),
        )
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir);
    if let Ok(rustup_home) = env::var("RUSTUP_HOME") {
        cmd.env("RUSTUP_HOME", rustup_home);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo for the eBPF build: {e}; {SETUP_HINT}"));
    if !status.success() {
        panic!("building the eBPF programs failed (see the errors above); if the toolchain is missing, {SETUP_HINT}");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/portcullis");
    let dest = out_dir.join("portcullis.bpf.o");
    std::fs::copy(&obj, &dest)
        .unwrap_or_else(|e| panic!("eBPF object {} missing: {e}", obj.display()));
}
