//! `Admission`: which gossiped node states become members.
//!
//! Sans-IO: the gossip driver hands it chitchat's live node states and the time; it returns
//! the admitted members, one per node id. A node state is admitted only once its record
//! verifies ([`MemberAuth::verify`]: certificate chains to the cluster CA, signature over
//! [`signed_record`], certificate names the node id). Then:
//!
//! - each distinct state is checked once (cached by chitchat id and a hash of its keys;
//!   re-checked after [`REVERIFY_AFTER`] so a certificate that expires is noticed);
//! - a newer state that fails does not evict the last record of that chitchat id that
//!   verified (rewriting a real member's keys cannot remove or move it);
//! - per node id the highest verified generation wins, and a generation lower than the
//!   highest ever admitted for that id is refused (a replayed old record);
//! - the claimed weight is lowered to `max_weight` (logged once per node);
//! - every refusal is counted once per distinct state, and logged at most once per node
//!   and reason per [`LOG_INTERVAL`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{ChitchatId, NodeState};
use tracing::{debug, warn};

use super::keys::{self, ParseError};
use super::stats::{GossipCounters, LOG_INTERVAL, RateLimitedLog};
use crate::auth::{MemberAuth, RecordError, RejectReason, signed_record};
use crate::member::{Member, NodeId};
use crate::view::ClusterId;

/// A verified state is verified again after this long (certificates expire).
pub(crate) const REVERIFY_AFTER: Duration = Duration::from_secs(600);

/// What is known about one chitchat id.
#[derive(Debug)]
struct Checked {
    /// Hash of the keys last checked.
    input: [u8; 32],
    /// When they were checked.
    at: Instant,
    /// The last record of this chitchat id that verified.
    verified: Option<Member>,
    /// Whether its refusal as stale was counted.
    stale_counted: bool,
}

/// Decides which gossiped states are members (see the module docs).
pub(crate) struct Admission {
    cluster_id: ClusterId,
    max_weight: u32,
    auth: Arc<dyn MemberAuth>,
    counters: Arc<GossipCounters>,
    log: RateLimitedLog<(String, RejectReason)>,
    checked: BTreeMap<ChitchatId, Checked>,
    /// Highest generation admitted per node id.
    admitted: BTreeMap<NodeId, u64>,
    /// Nodes whose weight clamping was logged.
    clamped: BTreeSet<NodeId>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("cluster_id", &self.cluster_id)
            .field("checked", &self.checked.len())
            .field("admitted", &self.admitted)
            .finish_non_exhaustive()
    }
}

impl Admission {
    pub(crate) fn new(
        cluster_id: ClusterId,
        max_weight: u32,
        auth: Arc<dyn MemberAuth>,
        counters: Arc<GossipCounters>,
    ) -> Self {
        Admission {
            cluster_id,
            max_weight,
            auth,
            counters,
            log: RateLimitedLog::new(LOG_INTERVAL),
            checked: BTreeMap::new(),
            admitted: BTreeMap::new(),
            clamped: BTreeSet::new(),
        }
    }

    /// The admitted members among `live`, plus `me` (always itself: states claiming this
    /// node's id are ignored).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        live: &BTreeMap<ChitchatId, NodeState>,
        me: &Member,
    ) -> BTreeMap<NodeId, Member> {
        let mut best: BTreeMap<NodeId, (ChitchatId, Member)> = BTreeMap::new();
        for (cid, state) in live {
            if &*cid.node_id == me.id.as_str() {
                continue;
            }
            self.check(now, cid, state);
            let Some(m) = self.checked.get(cid).and_then(|c| c.verified.clone()) else {
                continue;
            };
            if best
                .get(&m.id)
                .is_none_or(|(_, old)| old.generation < m.generation)
            {
                best.insert(m.id.clone(), (cid.clone(), m));
            }
        }
        let mut out = BTreeMap::new();
        for (id, (cid, mut m)) in best {
            let admitted = self.admitted.get(&id).copied();
            if let Some(admitted) = admitted.filter(|a| m.generation < *a) {
                let first = self
                    .checked
                    .get_mut(&cid)
                    .is_some_and(|c| !std::mem::replace(&mut c.stale_counted, true));
                if first {
                    let e = RecordError::StaleGeneration {
                        generation: m.generation,
                        admitted,
                    };
                    self.refused(now, &cid, &e);
                }
                continue;
            }
            self.admitted.insert(id.clone(), m.generation);
            if m.weight > self.max_weight {
                if self.clamped.insert(id.clone()) {
                    self.counters.clamped();
                    warn!(node = %id, claimed = m.weight, max = self.max_weight,
                        "member claims a weight above max_member_weight; clamped");
                }
                m.weight = self.max_weight;
            }
            out.insert(id, m);
        }
        // Forget what is gone, except verified records of the current generation (a
        // member that comes back keeps its last verified record).
        let admitted = &self.admitted;
        self.checked.retain(|cid, c| {
            live.contains_key(cid)
                || (c.verified.is_some()
                    && NodeId::new(&*cid.node_id)
                        .is_ok_and(|id| admitted.get(&id).is_some_and(|g| cid.generation_id >= *g)))
        });
        out.insert(me.id.clone(), me.clone());
        out
    }

    /// Checks the state of `cid` unless this exact state was checked recently.
    fn check(&mut self, now: Instant, cid: &ChitchatId, state: &NodeState) {
        let input = fingerprint(state);
        if let Some(c) = self.checked.get(cid)
            && c.input == input
            && now.saturating_duration_since(c.at) < REVERIFY_AFTER
        {
            return;
        }
        let verdict = self.verify(cid, state);
        let entry = self.checked.entry(cid.clone()).or_insert(Checked {
            input,
            at: now,
            verified: None,
            stale_counted: false,
        });
        let same_input = entry.input == input;
        entry.input = input;
        entry.at = now;
        match verdict {
            Ok(Some(m)) => {
                entry.verified = Some(m);
                entry.stale_counted = false;
            }
            // Still propagating: wait for the rest of the keys.
            Ok(None) => {}
            Err(e) => {
                if same_input {
                    // The very record that verified before no longer does (e.g. its
                    // certificate expired).
                    entry.verified = None;
                }
                self.refused(now, cid, &e);
            }
        }
    }

    /// Verifies one state: `Ok(None)` while incomplete.
    fn verify(&self, cid: &ChitchatId, state: &NodeState) -> Result<Option<Member>, RecordError> {
        let member = match keys::from_node_state(cid, state) {
            Ok(m) => m,
            Err(ParseError::Missing(key)) => {
                // Certificate and signature are published first: with them present, the
                // rest is still propagating; without them, a complete record is unsigned.
                let signed_keys = [keys::CERT, keys::SIG];
                return if signed_keys.iter().any(|k| !state.contains_key(k))
                    && keys::RECORD_KEYS.iter().all(|k| state.contains_key(k))
                {
                    Err(RecordError::Unsigned)
                } else {
                    debug!(node = ?cid, missing = key, "member record incomplete");
                    Ok(None)
                };
            }
            Err(ParseError::Invalid(key, why)) => {
                return Err(RecordError::Malformed(format!("{key}: {why}")));
            }
        };
        let (chain, signature) = match keys::signature_of(state) {
            Ok(s) => s,
            Err(ParseError::Missing(_)) => return Err(RecordError::Unsigned),
            Err(ParseError::Invalid(key, why)) => {
                return Err(RecordError::Malformed(format!("{key}: {why}")));
            }
        };
        let bytes = signed_record(&self.cluster_id, cid.gossip_advertise_addr, &member);
        self.auth.verify(&chain, &bytes, &signature, &member.id)?;
        Ok(Some(member))
    }

    /// Counts a refusal and logs it (rate-limited per claimed node and reason).
    fn refused(&mut self, now: Instant, cid: &ChitchatId, e: &RecordError) {
        let reason = e.reason();
        self.counters.reject(reason);
        let node: String = cid.node_id.chars().take(64).collect();
        if let Some(suppressed) = self.log.hit(now, &(node.clone(), reason)) {
            warn!(node = %node, generation = cid.generation_id, gossip_addr = %cid.gossip_advertise_addr,
                %reason, error = %e, suppressed,
                "gossiped member refused (logged at most once a minute per node and reason)");
        }
    }
}

/// A hash of the keys that make a member record.
fn fingerprint(state: &NodeState) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for key in [keys::CERT, keys::SIG]
        .iter()
        .chain(keys::RECORD_KEYS.iter())
    {
        match state.get(key) {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::auth::SignError;
    use crate::member::{Role, RoleSet};

    /// A stand-in for certificates: a "certificate" is `ca:<name>`, a signature is the
    /// BLAKE3 hash of name and message. Counts verifications.
    #[derive(Default)]
    struct FakeAuth {
        verified: AtomicUsize,
    }

    fn fake_sig(name: &str, msg: &[u8]) -> Vec<u8> {
        let mut h = blake3::Hasher::new();
        h.update(name.as_bytes());
        h.update(msg);
        h.finalize().as_bytes().to_vec()
    }

    impl MemberAuth for FakeAuth {
        fn certificate_chain(&self) -> Vec<Vec<u8>> {
            vec![b"ca:me".to_vec()]
        }

        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
            Ok(fake_sig("me", message))
        }

        fn verify(
            &self,
            chain: &[Vec<u8>],
            message: &[u8],
            signature: &[u8],
            node_id: &NodeId,
        ) -> Result<(), RecordError> {
            self.verified.fetch_add(1, Ordering::SeqCst);
            let name = chain
                .first()
                .and_then(|c| c.strip_prefix(b"ca:"))
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| RecordError::UntrustedCertificate("not ours".into()))?;
            if signature != fake_sig(name, message) {
                return Err(RecordError::BadSignature("mismatch".into()));
            }
            if name != node_id.as_str() {
                return Err(RecordError::NameMismatch {
                    claimed: node_id.clone(),
                    names: vec![name.into()],
                });
            }
            Ok(())
        }
    }

    const GOSSIP: &str = "127.0.0.1:7000";

    fn cluster() -> ClusterId {
        ClusterId::new("c").unwrap()
    }

    fn member(name: &str, generation: u64) -> Member {
        let mut m = Member::new(
            NodeId::new(name).unwrap(),
            RoleSet::of(&[Role::Origin]),
            "127.0.0.1:4000".parse().unwrap(),
        );
        m.generation = generation;
        m
    }

    fn cid(m: &Member) -> ChitchatId {
        ChitchatId::new(m.id.as_str(), m.generation, GOSSIP.parse().unwrap())
    }

    /// The state `m` publishes when signed by `signer`'s certificate.
    fn state(m: &Member, signer: &str) -> NodeState {
        let bytes = signed_record(&cluster(), GOSSIP.parse().unwrap(), m);
        let chain = vec![format!("ca:{signer}").into_bytes()];
        let mut s = NodeState::for_test();
        for (k, v) in keys::to_key_values(m, &chain, &fake_sig(signer, &bytes)) {
            s.set(k, v);
        }
        s
    }

    fn admission(max_weight: u32) -> (Admission, Arc<FakeAuth>, Arc<GossipCounters>) {
        let auth = Arc::new(FakeAuth::default());
        let counters = Arc::new(GossipCounters::default());
        let a = Admission::new(cluster(), max_weight, auth.clone(), counters.clone());
        (a, auth, counters)
    }

    fn me() -> Member {
        member("me", 1)
    }

    fn ids(out: &BTreeMap<NodeId, Member>) -> Vec<(String, u64)> {
        out.values()
            .map(|m| (m.id.to_string(), m.generation))
            .collect()
    }

    #[test]
    fn a_signed_record_is_admitted_and_verified_once() {
        let (mut a, auth, counters) = admission(10);
        let a1 = member("a", 1);
        let live = BTreeMap::from([(cid(&a1), state(&a1, "a"))]);
        let now = Instant::now();
        for _ in 0..5 {
            let out = a.admit(now, &live, &me());
            assert_eq!(ids(&out), [("a".into(), 1), ("me".into(), 1)]);
        }
        assert_eq!(auth.verified.load(Ordering::SeqCst), 1, "cached");
        // Re-verified once the cache entry is old.
        a.admit(now + REVERIFY_AFTER, &live, &me());
        assert_eq!(auth.verified.load(Ordering::SeqCst), 2);
        assert_eq!(counters.snapshot().rejected_total(), 0);
    }

    #[test]
    fn impostors_are_refused_and_counted_once_per_record() {
        let (mut a, _, counters) = admission(10);
        let now = Instant::now();
        // No certificate and signature at all.
        let unsigned_m = member("unsigned", 1);
        let mut unsigned = NodeState::for_test();
        for (k, v) in keys::to_key_values(&unsigned_m, &[], &[])
            .into_iter()
            .skip(2)
        {
            unsigned.set(k, v);
        }
        // Signed, but by a certificate that names someone else.
        let claimer = member("victim", 1);
        // Signed by the right name, but altered afterwards.
        let altered_m = member("altered", 1);
        let mut altered = state(&altered_m, "altered");
        altered.set(keys::QUIC, "10.9.9.9:1");
        // Not ours at all.
        let foreign_m = member("foreign", 1);
        let mut foreign = state(&foreign_m, "foreign");
        foreign.set(
            keys::CERT,
            keys::encode_chain(&[b"other-ca:foreign".to_vec()]),
        );
        // Not parseable.
        let bad_m = member("bad", 1);
        let mut bad = state(&bad_m, "bad");
        bad.set(keys::WEIGHT, "lots");
        let live = BTreeMap::from([
            (cid(&unsigned_m), unsigned),
            (cid(&claimer), state(&claimer, "thief")),
            (cid(&altered_m), altered),
            (cid(&foreign_m), foreign),
            (cid(&bad_m), bad),
        ]);
        for i in 0..3 {
            let out = a.admit(now + Duration::from_secs(i), &live, &me());
            assert_eq!(ids(&out), [("me".into(), 1)]);
        }
        let s = counters.snapshot();
        for reason in [
            RejectReason::Unsigned,
            RejectReason::NameMismatch,
            RejectReason::BadSignature,
            RejectReason::UntrustedCertificate,
            RejectReason::Malformed,
        ] {
            assert_eq!(s.rejected(reason), 1, "{reason}");
        }
    }

    #[test]
    fn a_record_still_propagating_is_neither_admitted_nor_counted() {
        let (mut a, _, counters) = admission(10);
        let m = member("a", 1);
        let full = state(&m, "a");
        let mut partial = NodeState::for_test();
        for key in [keys::CERT, keys::SIG, keys::ROLES] {
            partial.set(key, full.get(key).unwrap());
        }
        let out = a.admit(Instant::now(), &BTreeMap::from([(cid(&m), partial)]), &me());
        assert_eq!(out.len(), 1);
        assert_eq!(counters.snapshot().rejected_total(), 0);
    }

    #[test]
    fn a_failing_newer_state_does_not_evict_the_verified_record() {
        let (mut a, _, counters) = admission(10);
        let now = Instant::now();
        let m = member("a", 1);
        let live = BTreeMap::from([(cid(&m), state(&m, "a"))]);
        a.admit(now, &live, &me());
        // An attacker rewrites a's keys: new address, signature left as it was.
        let mut rewritten = state(&m, "a");
        rewritten.set(keys::QUIC, "10.6.6.6:4000");
        let live = BTreeMap::from([(cid(&m), rewritten)]);
        let out = a.admit(now, &live, &me());
        assert_eq!(
            out[&m.id].quic_addr, m.quic_addr,
            "last verified record kept"
        );
        assert_eq!(counters.snapshot().rejected(RejectReason::BadSignature), 1);
        // Its own signed update goes through.
        let mut unready = m.clone();
        unready.ready = false;
        let live = BTreeMap::from([(cid(&m), state(&unready, "a"))]);
        assert!(!a.admit(now, &live, &me())[&m.id].ready);
    }

    #[test]
    fn a_lower_generation_never_replaces_a_higher_one() {
        let (mut a, _, counters) = admission(10);
        let now = Instant::now();
        let (old, new) = (member("a", 3), member("a", 5));
        let both = BTreeMap::from([(cid(&old), state(&old, "a")), (cid(&new), state(&new, "a"))]);
        assert_eq!(a.admit(now, &both, &me())[&new.id].generation, 5);
        // The new incarnation dies; a replay of the old one is live: refused.
        let replay = BTreeMap::from([(cid(&old), state(&old, "a"))]);
        for _ in 0..3 {
            assert!(!a.admit(now, &replay, &me()).contains_key(&old.id));
        }
        assert_eq!(
            counters.snapshot().rejected(RejectReason::StaleGeneration),
            1
        );
        // A newer restart is admitted.
        let newer = member("a", 6);
        let live = BTreeMap::from([(cid(&newer), state(&newer, "a"))]);
        assert_eq!(a.admit(now, &live, &me())[&newer.id].generation, 6);
    }

    proptest::proptest! {
        /// Whatever an attacker writes into the keys (absent, arbitrary text, or a valid
        /// record's value), admission neither panics nor admits it unsigned.
        #[test]
        fn arbitrary_keys_never_panic_or_get_in(
            picks in proptest::collection::vec((0u8..3, ".{0,60}"), 8),
        ) {
            let (mut a, _, counters) = admission(10);
            let m = member("x", 1);
            let valid = state(&m, "x");
            let names = [keys::CERT, keys::SIG, keys::ROLES, keys::QUIC, keys::HTTP,
                keys::VERSION, keys::READY, keys::WEIGHT];
            let mut s = NodeState::for_test();
            let mut all_valid = true;
            for (key, (pick, text)) in names.iter().zip(&picks) {
                match pick {
                    0 => all_valid = false,
                    1 => {
                        s.set(*key, text);
                        all_valid &= valid.get(key) == Some(text.as_str());
                    }
                    _ => s.set(*key, valid.get(key).unwrap()),
                }
            }
            let out = a.admit(Instant::now(), &BTreeMap::from([(cid(&m), s)]), &me());
            proptest::prop_assert_eq!(out.contains_key(&m.id), all_valid);
            proptest::prop_assert!(counters.snapshot().rejected_total() <= 1);
        }
    }

    #[test]
    fn claimed_weight_is_clamped_and_this_node_is_always_itself() {
        let (mut a, _, counters) = admission(4);
        let mut heavy = member("heavy", 1);
        heavy.weight = 1000;
        let mut fake_me = member("me", 99);
        fake_me.weight = 1000;
        let live = BTreeMap::from([
            (cid(&heavy), state(&heavy, "heavy")),
            (cid(&fake_me), state(&fake_me, "me")),
        ]);
        for _ in 0..3 {
            let out = a.admit(Instant::now(), &live, &me());
            assert_eq!(out[&heavy.id].weight, 4);
            assert_eq!(out[&me().id], me());
        }
        assert_eq!(
            counters.snapshot().clamped_weights,
            1,
            "counted once per node"
        );
    }
}
