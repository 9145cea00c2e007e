//! Real client tools for the registry tests: finding them, running them, building an
//! image with `umoci`, and a private `containerd`.
//!
//! The tools are installed by `.ci/run`; elsewhere a missing tool makes a test print
//! SKIPPED and pass (under `CI` it fails instead).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed (CI installs it)"
        );
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

/// Runs a command on a blocking thread (the cluster keeps serving meanwhile); panics with
/// its output if it fails.
pub async fn run(cmd: &str, args: Vec<String>) -> String {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&cmd).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

/// An OCI layout at `dir` with image `v1`: two layers of random bytes.
pub async fn build_image(dir: &Path) {
    build_image_with(dir, &[3_000_000, 1_500_000]).await;
}

/// [`build_image`] with one layer per entry of `sizes` (bytes before compression).
pub async fn build_image_with(dir: &Path, sizes: &[u32]) {
    let layout = dir.join("img");
    let l = layout.to_str().unwrap().to_string();
    run("umoci", s(&["init", "--layout", &l])).await;
    run("umoci", s(&["new", "--image", &format!("{l}:v1")])).await;
    for (i, &size) in (1u8..).zip(sizes) {
        let file = dir.join(format!("payload{i}"));
        let data: Vec<u8> = (0..size)
            .map(|j: u32| (j.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i)
            .collect();
        std::fs::write(&file, data).unwrap();
        run(
            "umoci",
            vec![
                "insert".into(),
                "--image".into(),
                format!("{l}:v1"),
                file.to_str().unwrap().into(),
                format!("/data/payload{i}"),
            ],
        )
        .await;
    }
}

pub fn blobs_of(layout: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A private containerd daemon (its own root, state and socket), stopped on drop.
pub struct Containerd {
    child: std::process::Child,
    pub socket: std::path::PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_containerd(dir: &Path) -> Containerd {
    let socket = dir.join("containerd.sock");
    let config = dir.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = \"{sock}\"\n[ttrpc]\naddress = \"{sock}.ttrpc\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Containerd { child, socket }
}

/// `skopeo copy` of `src` (plain HTTP) into the OCI layout `out`, tag `v1`.
pub async fn skopeo_pull(src: String, out: &Path) {
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--src-tls-verify=false".into(),
            src,
            format!("oci:{}:v1", out.display()),
        ],
    )
    .await;
}

/// A plain HTTP client for asserting on registry answers.
pub fn http() -> reqwest::Client {
    // Workspace builds give reqwest's rustls no default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The documented containerd `hosts.toml` under `dir`: docker.io mirrored by the registry
/// at `mirror` (plain HTTP). Returns the directory to pass as `--hosts-dir`.
pub fn docker_io_mirror(dir: &Path, mirror: std::net::SocketAddr) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("docker.io")).unwrap();
    std::fs::write(
        dir.join("docker.io/hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    dir.to_path_buf()
}
