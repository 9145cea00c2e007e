//! The cluster view agents receive from any ring node: untrusted bytes never panic, and a
//! decoded view re-encodes to the same view.
#![no_main]

use kraken_membership::ClusterView;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = ClusterView::decode(data) {
        let again = ClusterView::decode(&view.encode()).expect("a decoded view re-encodes");
        assert_eq!(again.fingerprint(), view.fingerprint());
    }
});
