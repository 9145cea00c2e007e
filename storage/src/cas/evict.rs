//! Which blobs to evict: a pure planner over candidates, so the policy is testable without
//! files.
//!
//! Policy, in order:
//! 1. Blobs past their time to live, or idle past their time to idle, go.
//! 2. If the store (plus the space being asked for) is still over quota, least recently used
//!    blobs go until it fits.
//! 3. Above the high-water mark (by current use) the store is in aggressive mode: the shorter
//!    `aggressive_tti` applies and LRU frees space down to the low-water mark, so a busy
//!    cache does not evict one blob per new arrival.
//!
//! Pinned blobs and blobs with open readers or writers are never candidates. A swarm
//! seeding a blob holds a reader of it; when a reservation fails because only such blobs
//! are left, the store returns `NoSpace` and the agent stops idle seeders (the exchange's
//! `release_seeders`) and retries: the store knows nothing of swarms.

use std::time::Duration;

use crate::digest::Digest;

/// A blob the planner may consider.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) created_ms: u64,
    pub(crate) last_access_ms: u64,
    /// False for pinned blobs and blobs in use.
    pub(crate) evictable: bool,
}

/// The knobs of [`plan`], taken from `CasConfig`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) capacity: u64,
    pub(crate) tti: Option<Duration>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) high_water: f64,
    pub(crate) low_water: f64,
    pub(crate) aggressive_tti: Option<Duration>,
}

/// The planner's decision.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Indices into the candidate slice, in eviction order.
    pub(crate) evict: Vec<usize>,
    pub(crate) aggressive: bool,
}

fn expired(age_ms: u64, limit: Option<Duration>) -> bool {
    limit.is_some_and(|l| u128::from(age_ms) >= l.as_millis())
}

/// Plans evictions so that `used + need` fits the policy at time `now_ms`.
pub(crate) fn plan(
    cands: &[Candidate],
    used: u64,
    need: u64,
    policy: &Policy,
    now_ms: u64,
) -> Plan {
    let fraction = |f: f64| (policy.capacity as f64 * f) as u64;
    let aggressive = used > fraction(policy.high_water);
    let tti = match (aggressive, policy.aggressive_tti, policy.tti) {
        (true, Some(a), Some(t)) => Some(a.min(t)),
        (true, Some(a), None) => Some(a),
        (_, _, t) => t,
    };

    let mut plan = Plan {
        evict: Vec::new(),
        aggressive,
    };
    let mut remaining = used;
    let mut lru = Vec::new();
    for (i, c) in cands.iter().enumerate().filter(|(_, c)| c.evictable) {
        let idle = now_ms.saturating_sub(c.last_access_ms);
        let age = now_ms.saturating_sub(c.created_ms);
        if expired(age, policy.ttl) || expired(idle, tti) {
            plan.evict.push(i);
            remaining = remaining.saturating_sub(c.size);
        } else {
            lru.push(i);
        }
    }

    let target = if aggressive {
        fraction(policy.low_water)
    } else {
        policy.capacity
    };
    // Oldest access first; the digest breaks ties so the plan is deterministic.
    lru.sort_by_key(|&i| (cands[i].last_access_ms, cands[i].digest));
    for i in lru {
        if remaining.saturating_add(need) <= target {
            break;
        }
        plan.evict.push(i);
        remaining = remaining.saturating_sub(cands[i].size);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(n: u8, size: u64, created_ms: u64, last_access_ms: u64, evictable: bool) -> Candidate {
        Candidate {
            digest: Digest::sha256_of(&[n]),
            size,
            created_ms,
            last_access_ms,
            evictable,
        }
    }

    fn policy() -> Policy {
        Policy {
            capacity: 1000,
            tti: Some(Duration::from_secs(100)),
            ttl: None,
            high_water: 0.9,
            low_water: 0.5,
            aggressive_tti: Some(Duration::from_secs(10)),
        }
    }

    #[test]
    fn nothing_to_do_under_quota() {
        let c = [cand(1, 100, 0, 0, true)];
        assert!(plan(&c, 100, 0, &policy(), 50_000).evict.is_empty());
    }

    #[test]
    fn idle_and_old_blobs_expire() {
        let mut p = policy();
        p.ttl = Some(Duration::from_secs(500));
        let c = [
            cand(1, 10, 0, 0, true),       // idle 200 s > tti
            cand(2, 10, 0, 150_000, true), // fresh
            cand(3, 10, 0, 0, false),      // pinned: stays
            cand(4, 10, 0, 199_000, true), // fresh
        ];
        assert_eq!(plan(&c, 40, 0, &p, 200_000).evict, vec![0]);
        // 600 s after creation every evictable blob is past its ttl.
        assert_eq!(plan(&c, 40, 0, &p, 600_000).evict, vec![0, 1, 3]);
    }

    #[test]
    fn lru_makes_room_for_new_blobs() {
        let c = [
            cand(1, 300, 0, 30_000, true),
            cand(2, 300, 0, 10_000, true),
            cand(3, 300, 0, 20_000, false),
        ];
        // 950 used (above the 900 high-water mark): aggressive, so free down to 500 - 50.
        let p = plan(&c, 950, 50, &policy(), 35_000);
        assert!(p.aggressive);
        assert_eq!(p.evict, vec![1, 0]);
        // Normal mode frees only what is needed.
        let mut pol = policy();
        pol.high_water = 1.0;
        let p = plan(&c, 900, 150, &pol, 35_000);
        assert!(!p.aggressive);
        assert_eq!(p.evict, vec![1]);
    }

    #[test]
    fn aggressive_mode_shortens_tti() {
        let c = [cand(1, 100, 0, 0, true), cand(2, 100, 0, 19_000, true)];
        // Under the high-water mark the 100 s tti applies: nothing is idle long enough.
        assert!(plan(&c, 200, 0, &policy(), 20_000).evict.is_empty());
        // Above it, 10 s of idleness is enough.
        let p = plan(&c, 950, 0, &policy(), 20_000);
        assert!(p.aggressive);
        assert_eq!(p.evict[0], 0);
    }
}
