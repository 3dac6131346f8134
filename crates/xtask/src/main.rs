//! `cargo xtask`: the README's two commands, and the one set-up step they share.
//!
//! ```text
//! cargo xtask demo [ARGS..]   set up, then `cargo run --example demo -- ARGS..`
//! cargo xtask test [ARGS..]   set up, then `cargo test --workspace ARGS..`
//! cargo xtask setup           only the set-up
//! ```
//!
//! The set-up looks for what the build and the local Kafka broker need from the system — a C++
//! toolchain, cmake, pkg-config, libclang (RocksDB's bindgen), OpenSSL's headers, Java 17+ and
//! Maven — and takes a fraction of a second when all is there. What is missing it installs with
//! `apt-get` when it runs as root or with password-less sudo; otherwise it stops at once and
//! prints the exact command to run. Everything else (librdkafka, RocksDB, zstd, zlib) is built
//! from the crates' bundled sources; of curl only its headers are needed (librdkafka's build
//! includes one even without OIDC). Kerberos and OIDC are opt-in cargo features (`gssapi`,
//! `oidc`, docs/operations.md); when the arguments ask for `gssapi`, libsasl2 is checked too.
//!
//! No dependencies, so that it builds in seconds, before anything heavy.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((verb, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let cargo_args: Vec<String> = match verb.as_str() {
        "demo" => ["run", "--example", "demo", "--"]
            .iter()
            .map(ToString::to_string)
            .chain(rest.iter().cloned())
            .collect(),
        "test" => ["test", "--workspace"]
            .iter()
            .map(ToString::to_string)
            .chain(rest.iter().cloned())
            .collect(),
        "setup" => Vec::new(),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let features = Features::from_args(rest);
    if let Err(message) = setup(&features) {
        eprintln!("{message}");
        return ExitCode::FAILURE;
    }
    if cargo_args.is_empty() {
        return ExitCode::SUCCESS;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    match Command::new(&cargo).args(&cargo_args).status() {
        Ok(status) => ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8)),
        Err(e) => {
            eprintln!("xtask: could not run `{cargo}`: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <demo|test|setup> [ARGS..]
  demo   set up, then run the exactly-once demo (cargo run --example demo -- ARGS)
  test   set up, then run the whole test suite (cargo test --workspace ARGS)
  setup  only check and install what the build and the local broker need";

/// The opt-in features whose system libraries the set-up must check too.
#[derive(Debug, Default, PartialEq, Eq)]
struct Features {
    gssapi: bool,
}

impl Features {
    fn from_args(args: &[String]) -> Self {
        let mut f = Self::default();
        let mut named = |list: &str| {
            for name in list.split([',', ' ']) {
                let name = name.rsplit('/').next().unwrap_or(name);
                f.gssapi |= name == "gssapi";
            }
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--all-features" {
                named("gssapi");
            } else if a == "--features" || a == "-F" {
                if let Some(list) = it.next() {
                    named(list);
                }
            } else if let Some(list) = a.strip_prefix("--features=") {
                named(list);
            }
        }
        f
    }
}

/// One thing the build or the broker needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Need {
    what: &'static str,
    package: &'static str,
}

fn setup(features: &Features) -> Result<(), String> {
    let started = Instant::now();
    let sys = System::real();
    let missing = missing(features, &sys);
    if missing.is_empty() {
        eprintln!(
            "xtask: set-up: everything the build needs is present ({} ms)",
            started.elapsed().as_millis()
        );
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    let whats: Vec<&str> = missing.iter().map(|n| n.what).collect();
    eprintln!("xtask: set-up: missing {}", whats.join(", "));
    if !sys.has_program("apt-get") {
        return Err(format!(
            "xtask: this is not a Debian-like system (no apt-get). Install these (Debian's names: \
             {}), then run the command again.",
            packages.join(" ")
        ));
    }
    let sudo = if is_root() {
        None
    } else if Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        Some("sudo")
    } else {
        return Err(format!(
            "xtask: installing needs root. Run this, then the command again:\n\n    {}\n",
            install_line(&packages, true)
        ));
    };
    eprintln!(
        "xtask: installing: {}",
        install_line(&packages, sudo.is_some())
    );
    let run = |args: &[&str]| -> Result<(), String> {
        let mut command = match sudo {
            Some(sudo) => {
                let mut c = Command::new(sudo);
                c.args(args);
                c
            }
            None => {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            }
        };
        let status = command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("xtask: could not run {}: {e}", args.join(" ")))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "xtask: `{}` failed ({status}). Install these by hand, then run the command \
                 again:\n\n    {}\n",
                args.join(" "),
                install_line(&packages, !is_root())
            ))
        }
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&packages);
    run(&install)?;
    // Scanned again: the install adds library directories (/usr/lib/llvm-14/lib).
    let still = self::missing(features, &System::real());
    if !still.is_empty() {
        let whats: Vec<&str> = still.iter().map(|n| n.what).collect();
        return Err(format!(
            "xtask: still missing after the install: {} — see the README, \"The two commands\"",
            whats.join(", ")
        ));
    }
    eprintln!(
        "xtask: set-up done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn install_line(packages: &[&str], sudo: bool) -> String {
    let sudo = if sudo { "sudo " } else { "" };
    format!(
        "{sudo}apt-get update && {sudo}apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// What the checks look at: the directories searched for programs and libraries.
#[derive(Debug)]
struct System {
    path: Vec<PathBuf>,
    lib_dirs: Vec<PathBuf>,
    include_dirs: Vec<PathBuf>,
    libclang_path: Option<PathBuf>,
    use_broker: bool,
}

impl System {
    fn real() -> Self {
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        // Debian's multiarch include directory (/usr/include/x86_64-linux-gnu) holds curl's.
        let mut include_dirs = vec![
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ];
        if let Ok(entries) = std::fs::read_dir("/usr/include") {
            include_dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with("-linux-gnu"))
                    .map(|e| e.path()),
            );
        }
        let mut lib_dirs = Vec::new();
        for base in ["/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib"] {
            lib_dirs.push(PathBuf::from(base));
            // Debian's multiarch directories and LLVM's own (/usr/lib/llvm-14/lib).
            if let Ok(entries) = std::fs::read_dir(base) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with("-linux-gnu") {
                        lib_dirs.push(e.path());
                    } else if name.starts_with("llvm") {
                        lib_dirs.push(e.path().join("lib"));
                    }
                }
            }
        }
        Self {
            path,
            lib_dirs,
            include_dirs,
            libclang_path: std::env::var_os("LIBCLANG_PATH").map(PathBuf::from),
            // With an external cluster the tests and the demo start no local broker.
            use_broker: std::env::var_os("WEIR_KAFKA_BOOTSTRAP").is_none(),
        }
    }

    fn has_program(&self, name: &str) -> bool {
        self.path.iter().any(|dir| dir.join(name).is_file())
    }

    fn has_header(&self, header: &str) -> bool {
        self.include_dirs
            .iter()
            .any(|dir| dir.join(header).is_file())
    }

    fn has_pkg_config(&self, module: &str) -> bool {
        self.has_program("pkg-config")
            && Command::new("pkg-config")
                .args(["--exists", module])
                .status()
                .is_ok_and(|s| s.success())
    }

    /// libclang as bindgen loads it (clang-sys's file names, not libclang-cpp), and clang's
    /// own headers (`stddef.h`), without which RocksDB's bindings cannot be generated.
    fn has_libclang(&self) -> bool {
        let dirs: Vec<&Path> = match &self.libclang_path {
            Some(p) => vec![p.as_path()],
            None => self.lib_dirs.iter().map(PathBuf::as_path).collect(),
        };
        let library = dirs.iter().any(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| is_libclang(&e.file_name().to_string_lossy()))
            })
        });
        library && self.has_clang_headers()
    }

    fn has_clang_headers(&self) -> bool {
        // <lib>/clang/<version>/include/stddef.h, next to the library.
        self.lib_dirs.iter().any(|dir| {
            std::fs::read_dir(dir.join("clang")).is_ok_and(|versions| {
                versions
                    .flatten()
                    .any(|v| v.path().join("include/stddef.h").is_file())
            })
        })
    }

    fn java_major(&self) -> Option<u32> {
        if !self.has_program("java") {
            return None;
        }
        let out = Command::new("java").arg("-version").output().ok()?;
        java_major(&String::from_utf8_lossy(&out.stderr))
    }
}

fn is_libclang(file: &str) -> bool {
    let Some(rest) = file.strip_prefix("libclang") else {
        return false;
    };
    if rest.starts_with("-cpp") {
        return false;
    }
    // libclang.so, libclang.so.1, libclang-14.so, libclang-14.so.1
    let Some((version, suffix)) = rest.split_once(".so") else {
        return false;
    };
    let version_ok = version.is_empty()
        || version
            .strip_prefix('-')
            .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'));
    version_ok && (suffix.is_empty() || suffix.starts_with('.'))
}

/// The major version in `java -version`'s first line (`openjdk version "17.0.15"`, `"1.8.0"`).
fn java_major(version_output: &str) -> Option<u32> {
    let quoted = version_output.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

fn missing(features: &Features, sys: &System) -> Vec<Need> {
    let mut missing = Vec::new();
    let mut need = |ok: bool, what: &'static str, package: &'static str| {
        if !ok {
            missing.push(Need { what, package });
        }
    };
    need(
        sys.has_program("c++") || sys.has_program("g++"),
        "a C++ compiler",
        "g++",
    );
    need(sys.has_program("make"), "make", "make");
    need(
        sys.has_program("cmake"),
        "cmake (librdkafka's build)",
        "cmake",
    );
    need(sys.has_program("pkg-config"), "pkg-config", "pkg-config");
    need(
        sys.has_libclang(),
        "libclang (RocksDB's bindgen)",
        "libclang-dev",
    );
    need(
        std::env::var_os("OPENSSL_DIR").is_some() || sys.has_pkg_config("openssl"),
        "OpenSSL's headers (librdkafka's TLS)",
        "libssl-dev",
    );
    // Only the header: librdkafka 2.12's rdkafka_conf.c includes <curl/curl.h> under `#ifdef
    // WITH_OAUTHBEARER_OIDC`, which its CMake build always defines (to 0 without curl). No
    // curl function is linked unless the `oidc` feature asks for it.
    need(
        sys.has_pkg_config("libcurl") || sys.has_header("curl/curl.h"),
        "curl's headers (librdkafka's build includes one)",
        "libcurl4-openssl-dev",
    );
    if features.gssapi {
        need(
            sys.has_pkg_config("libsasl2"),
            "Cyrus SASL (feature gssapi)",
            "libsasl2-dev",
        );
    }
    if sys.use_broker {
        need(
            sys.java_major().is_some_and(|v| v >= 17),
            "Java 17+ (the local Kafka broker)",
            "openjdk-17-jre-headless",
        );
        need(
            sys.has_program("mvn"),
            "Maven (fetches Kafka from Maven Central)",
            "maven",
        );
    }
    missing
}

fn is_root() -> bool {
    // `id -u` rather than libc: no dependencies.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libclang_file_names_are_clang_sys_ones() {
        for yes in [
            "libclang.so",
            "libclang.so.1",
            "libclang-14.so",
            "libclang-14.so.1",
            "libclang-14.0.6.so.14",
        ] {
            assert!(is_libclang(yes), "{yes}");
        }
        for no in [
            "libclang-cpp.so.14",
            "libclang-cpp.so",
            "libclang.a",
            "libclangAST.a",
            "libLLVM.so",
        ] {
            assert!(!is_libclang(no), "{no}");
        }
    }

    #[test]
    fn java_versions_old_and_new() {
        assert_eq!(
            java_major("openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime"),
            Some(17)
        );
        assert_eq!(java_major("java version \"1.8.0_412\""), Some(8));
        assert_eq!(java_major("openjdk version \"21-ea\""), Some(21));
        assert_eq!(java_major("nothing"), None);
    }

    #[test]
    fn features_named_in_cargo_arguments() {
        let f = |args: &[&str]| {
            Features::from_args(&args.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(f(&[]), Features::default());
        assert_eq!(f(&["--features", "weir/gssapi"]), Features { gssapi: true });
        assert_eq!(f(&["--features=mimalloc,oidc"]), Features { gssapi: false });
        assert_eq!(f(&["--all-features"]), Features { gssapi: true });
    }

    /// A fake system in a temporary directory: each check fails when its file is absent.
    #[test]
    fn missing_names_each_package_once_until_its_file_exists() {
        let root = std::env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        let bin = root.join("bin");
        let lib = root.join("lib");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let sys = System {
            path: vec![bin.clone()],
            lib_dirs: vec![lib.clone()],
            include_dirs: vec![root.join("include")],
            libclang_path: None,
            use_broker: true,
        };
        let packages = |sys: &System| -> Vec<&'static str> {
            missing(&Features::default(), sys)
                .iter()
                .map(|n| n.package)
                .collect()
        };
        let all = packages(&sys);
        for p in [
            "g++",
            "make",
            "cmake",
            "pkg-config",
            "libclang-dev",
            "libcurl4-openssl-dev",
            "maven",
        ] {
            assert!(all.contains(&p), "{p} in {all:?}");
        }
        for program in ["g++", "make", "cmake", "mvn"] {
            std::fs::write(bin.join(program), "").unwrap();
        }
        std::fs::write(lib.join("libclang-14.so.1"), "").unwrap();
        let now = packages(&sys);
        assert!(now.contains(&"libclang-dev"), "no headers yet: {now:?}");
        std::fs::create_dir_all(lib.join("clang/14/include")).unwrap();
        std::fs::write(lib.join("clang/14/include/stddef.h"), "").unwrap();
        std::fs::create_dir_all(root.join("include/curl")).unwrap();
        std::fs::write(root.join("include/curl/curl.h"), "").unwrap();
        let now = packages(&sys);
        for p in [
            "g++",
            "make",
            "cmake",
            "libclang-dev",
            "libcurl4-openssl-dev",
            "maven",
        ] {
            assert!(!now.contains(&p), "{p} still in {now:?}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_printed_line_installs_every_package() {
        assert_eq!(
            install_line(&["libclang-dev", "maven"], true),
            "sudo apt-get update && sudo apt-get install -y --no-install-recommends libclang-dev maven"
        );
    }
}
