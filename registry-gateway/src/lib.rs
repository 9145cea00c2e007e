//! The Docker Registry v2 / OCI distribution HTTP API over cluster traits (the HTTP server
//! itself arrives with issue "Registry gateway").
//!
//! Today it holds [`names`]: the specification's grammar for repository names and tags,
//! shared by the gateway and the build-index so both refuse exactly the same names.

pub mod names;
