//! The distribution specification's finer points through a whole cluster: a refused
//! manifest stores nothing, a subject and a foreign layer need not exist (the build-index's
//! closure agrees with the gateway), descriptor sizes are checked, and referrers live in
//! the build-index's referrers table (no fallback tag), copied to every live owner.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kraken_node::config::NodeRole;
use kraken_node::registry::ClusterRegistry;
use kraken_registry_gateway::registry::Registry;
use kraken_storage::Digest;
use serde_json::{Value, json};
use support::TestCluster;
use support::tools::http;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Origin, tracker, two build-index nodes, an agent and a proxy.
async fn cluster() -> (TestCluster, [usize; 4]) {
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let bi1 = c.add("bi-1", NodeRole::BuildIndex).await;
    let bi2 = c.add("bi-2", NodeRole::BuildIndex).await;
    let agent = c.add("agent-1", NodeRole::Agent).await;
    let proxy = c.add("proxy-1", NodeRole::Proxy).await;
    c.converge(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while [agent, proxy, bi1, bi2].iter().any(|&i| {
        c.node(i)
            .cluster()
            .view()
            .ring(kraken_membership::Role::BuildIndex)
            .len()
            < 2
    }) {
        assert!(std::time::Instant::now() < deadline, "build-index not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (c, [bi1, bi2, agent, proxy])
}

async fn push_blob(h: &reqwest::Client, push: &str, repo: &str, bytes: &[u8]) -> Digest {
    let d = Digest::sha256_of(bytes);
    let r = h
        .post(format!("{push}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    d
}

async fn put(h: &reqwest::Client, push: &str, path: &str, body: &Value) -> reqwest::Response {
    h.put(format!("{push}{path}"))
        .header("content-type", OCI_MANIFEST)
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap()
}

async fn json_get(h: &reqwest::Client, url: &str) -> Value {
    let r = h.get(url).send().await.unwrap();
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

async fn code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
    (status, v["errors"][0]["code"].as_str().unwrap_or("").into())
}

fn image(config: Digest, layers: Value, subject: Option<Digest>) -> Value {
    let mut m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": layers,
    });
    if let Some(s) = subject {
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": s.to_string(), "size": 10});
        m["artifactType"] = json!("application/vnd.example.sig");
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_checked_before_storing_and_referrers_need_no_tags() {
    let (mut c, [bi1, bi2, agent, proxy]) = cluster().await;
    let push = format!("http://{}", c.node(proxy).registry_addr().unwrap());
    let pull = format!("http://{}", c.node(agent).registry_addr().unwrap());
    let h = http();
    let config = push_blob(&h, &push, "app", b"{}").await;
    let layer = push_blob(&h, &push, "app", &vec![3u8; 100_000]).await;
    let missing = Digest::sha256_of(b"never pushed");

    // A refused manifest leaves nothing behind, by tag or by digest.
    let broken = image(
        config,
        json!([{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": missing.to_string(), "size": 12}]),
        None,
    );
    let broken_d = Digest::sha256_of(&serde_json::to_vec(&broken).unwrap());
    for reference in ["broken".to_string(), broken_d.to_string()] {
        let r = put(
            &h,
            &push,
            &format!("/v2/app/manifests/{reference}"),
            &broken,
        )
        .await;
        assert_eq!(code(r).await, (400, "MANIFEST_BLOB_UNKNOWN".into()));
    }
    for base in [&pull, &push] {
        let r = h
            .get(format!("{base}/v2/other/manifests/{broken_d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{base}");
    }

    // A size that lies is refused.
    let lying = image(
        config,
        json!([{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 1234}]),
        None,
    );
    let r = put(&h, &push, "/v2/app/manifests/lying", &lying).await;
    assert_eq!(code(r).await, (400, "MANIFEST_INVALID".into()));

    // A foreign layer with urls need not exist, by tag (the build-index agrees).
    let foreign = image(
        config,
        json!([{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "digest": missing.to_string(), "size": 12, "urls": ["https://example.com/l"]},
               {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 100_000}]),
        None,
    );
    let r = put(&h, &push, "/v2/app/manifests/foreign", &foreign).await;
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);

    // A referrer whose subject does not exist yet, by tag (the build-index agrees).
    let subject = Digest::sha256_of(b"pushed later");
    let sig = image(config, json!([]), Some(subject));
    let sig_d = Digest::sha256_of(&serde_json::to_vec(&sig).unwrap());
    let r = put(&h, &push, "/v2/app/manifests/sig", &sig).await;
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    assert_eq!(r.headers()["oci-subject"], subject.to_string().as_str());

    // A second referrer, pushed by digest, leaves the list when its manifest is deleted.
    let sig2 = image(
        config,
        json!([{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 100_000}]),
        Some(subject),
    );
    let sig2_d = Digest::sha256_of(&serde_json::to_vec(&sig2).unwrap());
    let r = put(&h, &push, &format!("/v2/app/manifests/{sig2_d}"), &sig2).await;
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    let listed = json_get(&h, &format!("{pull}/v2/app/referrers/{subject}")).await;
    assert_eq!(listed["manifests"].as_array().unwrap().len(), 2);
    let r = h
        .delete(format!("{push}/v2/app/manifests/{sig2_d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);

    // Listed through the agent, and no fallback tag appeared.
    let referrers = |base: String| {
        let h = h.clone();
        async move {
            let v = json_get(&h, &format!("{base}/v2/app/referrers/{subject}")).await;
            v["manifests"].as_array().unwrap().clone()
        }
    };
    let listed = referrers(pull.clone()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], sig_d.to_string());
    assert_eq!(listed[0]["artifactType"], "application/vnd.example.sig");
    let tags = json_get(&h, &format!("{pull}/v2/app/tags/list")).await;
    assert_eq!(tags["tags"], json!(["foreign", "sig"]));

    // Deleting every tag leaves the repository known, with an empty list (distribution
    // keeps it too); an unknown one is 404 NAME_UNKNOWN.
    for tag in ["foreign", "sig"] {
        let r = h
            .delete(format!("{push}/v2/app/manifests/{tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    // The other owner forgets them once its queued deletion runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = h
            .get(format!("{pull}/v2/app/tags/list"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let tags: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        if tags["tags"] == json!([]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{tags}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = h
        .get(format!("{pull}/v2/nothing/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (404, "NAME_UNKNOWN".into()));

    // Both build-index nodes own it: with either gone, it is still listed.
    c.kill(bi1);
    assert_eq!(referrers(pull.clone()).await.len(), 1);

    // Deleting the referrer forgets it on every live node.
    let registry = ClusterRegistry::proxy(c.node(proxy).cluster().clone());
    registry
        .delete_referrer("app", &subject, &sig_d)
        .await
        .unwrap();
    assert_eq!(
        registry.referrers("app", &subject).await.unwrap(),
        Vec::<String>::new()
    );
    let _ = bi2;
}
