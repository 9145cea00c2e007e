//! The systemd units in `deploy/systemd/`: one per role, each running that role with the
//! example config of `node/examples/`, accepted by `systemd-analyze verify` without a
//! warning, and hardened (`systemd-analyze security` exposure at most 2.0 of 10).
//!
//! `verify` checks that `ExecStart`'s binary exists, so the units are checked as copies
//! whose `/usr/local/bin/kraken` is the `kraken` binary this test was built with.
//!
//! The node config templates of `deploy/kubernetes/base/config/`, with their placeholders
//! filled in as the pods' init container fills them, parse and validate with the node's
//! own config parser. (`.ci/run` validates the manifests themselves against the API
//! schemas with `deploy/kubernetes/validate.py`.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const ROLES: [&str; 5] = ["origin", "agent", "tracker", "build-index", "proxy"];
const INSTALLED_BINARY: &str = "/usr/local/bin/kraken";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install systemd (apt-get install systemd)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_role_has_a_unit_that_systemd_verifies_and_that_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let mut copies = Vec::new();
    for role in ROLES {
        let name = format!("kraken-{role}.service");
        let unit = std::fs::read_to_string(repo().join("deploy/systemd").join(&name)).unwrap();
        let exec = format!("ExecStart={INSTALLED_BINARY} {role} --config /etc/kraken/{role}.toml");
        assert!(unit.lines().any(|l| l == exec), "{name}: no {exec:?}");
        assert!(
            repo().join(format!("node/examples/{role}.toml")).is_file(),
            "{name}: its example config is missing"
        );
        for key in [
            "User=kraken",
            "StateDirectory=kraken",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "LimitNOFILE=1048576",
            "Restart=on-failure",
        ] {
            assert!(unit.lines().any(|l| l.starts_with(key)), "{name}: no {key}");
        }
        let copy = dir.path().join(&name);
        std::fs::write(
            &copy,
            unit.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_kraken")),
        )
        .unwrap();
        copies.push(copy.to_str().unwrap().to_string());
    }
    let mut args = vec!["verify", "--man=no"];
    args.extend(copies.iter().map(String::as_str));
    let (ok, text) = systemd_analyze(&args);
    // An unknown key is only a warning to `verify`: any output is a failure here.
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    for copy in &copies {
        let (ok, text) = systemd_analyze(&["security", "--offline=yes", "--threshold=20", copy]);
        assert!(ok, "{copy} is exposed more than 2.0:\n{text}");
    }
}

/// What the init containers of `deploy/kubernetes/base` put in place of each placeholder
/// (the downward API's values for one pod).
fn render_template(text: &str, role: &str) -> String {
    let name = if role == "agent" {
        "node-a"
    } else {
        &format!("{role}-0")
    };
    text.replace("@NAME@", name)
        .replace("@POD_IP@", "10.244.1.7")
        .replace("@HOST_IP@", "10.0.0.101")
        .replace("@NAMESPACE@", "kraken")
}

#[test]
fn every_kubernetes_config_template_parses_and_validates() {
    use kraken_node::config::NodeConfig;
    let dir = tempfile::tempdir().unwrap();
    let templates = repo().join("deploy/kubernetes/base/config");
    let kustomization =
        std::fs::read_to_string(repo().join("deploy/kubernetes/base/kustomization.yaml")).unwrap();
    for role in ROLES {
        let file = format!("{role}.toml");
        assert!(
            kustomization.contains(&format!("config/{file}")),
            "the kustomization's ConfigMap lacks {file}"
        );
        let text = std::fs::read_to_string(templates.join(&file)).unwrap();
        let rendered = render_template(&text, role);
        assert!(
            !rendered.contains('@'),
            "{file}: a placeholder the init container does not fill"
        );
        let path = dir.path().join(&file);
        std::fs::write(&path, rendered).unwrap();
        let c = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        c.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.node.roles.len(), 1, "{file}");
        let named = serde_json::to_value(c.node.roles[0]).unwrap();
        assert_eq!(named.as_str(), Some(role), "{file}");
        // The paths the pods mount: the rendered config, the pod's own certificate, the CA.
        assert_eq!(c.tls.ca.to_str(), Some("/etc/kraken/ca/ca.crt"), "{file}");
        assert_eq!(
            c.tls.cert.to_str(),
            Some("/etc/kraken/tls/node.crt"),
            "{file}"
        );
        assert_eq!(
            c.tls.key.to_str(),
            Some("/etc/kraken/tls/node.key"),
            "{file}"
        );
        assert_eq!(
            c.http.address().map(|a| a.port()),
            Some(7602),
            "{file}: the probes' port"
        );
        if c.is_ring_node() {
            assert_eq!(
                c.gossip.seeds,
                vec!["kraken-ring.kraken.svc.cluster.local:7601".to_string()],
                "{file}: ring nodes seed from the headless Service"
            );
        } else {
            assert_eq!(
                c.view.seeds,
                vec!["kraken-ring.kraken.svc.cluster.local:7600".to_string()],
                "{file}"
            );
        }
    }
}
