//! Backend and router configuration through the public API: TOML parsing, validation
//! errors that name the offending `[[backends]]` entry, and building backends.
#![cfg(feature = "backends")]
#![allow(clippy::unwrap_used)]

use kraken_storage::backend::{
    Backend, BackendConfig, BackendError, KeyLayout, NamespaceRouter, RouterConfig, ServiceConfig,
    default_http_client,
};

fn router_error(text: &str) -> String {
    match RouterConfig::from_toml_str(text) {
        Err(e) => e.to_string(),
        Ok(config) => NamespaceRouter::new(&config, default_http_client().unwrap())
            .map(|_| ())
            .expect_err(text)
            .to_string(),
    }
}

const FIRST: &str = "[[backends]]\nnamespace = \"library/.*\"\nbackend.memory = {}\n";

#[test]
fn bad_regex_names_the_entry() {
    let text = format!("{FIRST}[[backends]]\nnamespace = \"team/(\"\nbackend.memory = {{}}\n");
    let err = router_error(&text);
    assert!(
        err.starts_with("backends[1] (namespace \"team/(\"): invalid namespace regex"),
        "{err}"
    );
}

#[test]
fn unknown_service_names_the_entry_and_the_service() {
    let text = format!(
        "{FIRST}[[backends]]\nnamespace = \"x\"\n[backends.backend.azblob]\ncontainer = \"c\"\n"
    );
    let err = router_error(&text);
    assert!(
        err.starts_with("backends[1] (namespace \"x\"): unknown field `azblob`"),
        "{err}"
    );
    assert!(err.contains("`s3`"), "lists the known services: {err}");
}

#[test]
fn missing_bucket_names_the_entry() {
    let text = "[[backends]]\nnamespace = \".*\"\n[backends.backend.s3]\nregion = \"us-east-1\"\n";
    let err = router_error(text);
    assert!(
        err.starts_with("backends[0] (namespace \".*\"): missing field `bucket`"),
        "{err}"
    );
}

#[test]
fn missing_service_names_the_entry() {
    let text = format!("{FIRST}[[backends]]\nnamespace = \"y\"\nbackend.layout = \"plain\"\n");
    let err = router_error(&text);
    assert!(
        err.starts_with("backends[1] (namespace \"y\"): no service section"),
        "{err}"
    );
}

#[test]
fn compiled_out_service_names_the_entry_and_feature() {
    let text =
        format!("{FIRST}[[backends]]\nnamespace = \"z\"\nbackend.gcs = {{ bucket = \"b\" }}\n");
    if cfg!(feature = "gcs") {
        // Builds without touching the network.
        RouterConfig::from_toml_str(&text).unwrap();
    } else {
        let err = router_error(&text);
        assert_eq!(
            err,
            "backends[1] (namespace \"z\"): storage service `gcs` is not compiled in; \
             rebuild kraken-storage with feature `gcs`"
        );
    }
}

#[test]
fn empty_list_is_rejected() {
    assert!(matches!(
        RouterConfig::from_toml_str("# nothing"),
        Err(BackendError::NoRoutes)
    ));
    let err =
        NamespaceRouter::new(&RouterConfig::default(), default_http_client().unwrap()).unwrap_err();
    assert!(matches!(err, BackendError::NoRoutes));
}

#[test]
fn router_ignores_the_rest_of_a_node_config() {
    let text = format!("listen = \"127.0.0.1:0\"\n[cas]\nroot = \"/x\"\n{FIRST}");
    let config = RouterConfig::from_toml_str(&text).unwrap();
    assert_eq!(config.backends.len(), 1);
    assert_eq!(config.backends[0].namespace, "library/.*");
}

#[test]
fn backend_config_from_toml() {
    let config = BackendConfig::from_toml_str(
        "layout = \"plain\"\n[s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    assert_eq!(config.layout, KeyLayout::Plain);
    assert_eq!(config.service.name(), "s3");
    // Building sends nothing over the network.
    let backend = Backend::new("b", &config, default_http_client().unwrap()).unwrap();
    assert_eq!(backend.service(), "s3");

    let err = BackendConfig::from_toml_str("[s3]\nbucket = \"b\"\nbukcet = \"c\"\n").unwrap_err();
    assert!(
        err.to_string().contains("line 3: unknown field `bukcet`"),
        "{err}"
    );
}

#[test]
fn backend_new_validates() {
    let mut config = BackendConfig::new(ServiceConfig::Memory(Default::default()));
    config.write_chunk_size = 0;
    let err = Backend::new("m", &config, default_http_client().unwrap()).unwrap_err();
    assert!(matches!(err, BackendError::Config(_)), "{err}");
}

/// The example in the README must stay valid.
#[test]
fn readme_example_parses() {
    let readme = include_str!("../../README.md");
    let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
    let text = &readme[start..start + readme[start..].find("```").unwrap()];
    let config = RouterConfig::from_toml_str(text).unwrap();
    config.validate().unwrap();
    assert_eq!(config.backends[0].backend.service.name(), "s3");
}
