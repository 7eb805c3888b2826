//! Who the client is (through `trusted_proxies` only), and how many sign-in flows it may start.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use http::HeaderMap;
use ipnet::IpNet;
use quick_cache::sync::Cache;

/// A cache keyed by what anonymous clients choose (their addresses): hashed with SipHash under a
/// random key (std's `RandomState`), not quick_cache's fast hasher, so that no one can aim keys
/// at one bucket.
type ClientCache<K, V> =
    Cache<K, V, quick_cache::UnitWeighter, std::collections::hash_map::RandomState>;

fn client_cache<K: Eq + std::hash::Hash + Clone, V: Clone>(n: usize) -> ClientCache<K, V> {
    Cache::with(
        n,
        n as u64,
        quick_cache::UnitWeighter,
        std::collections::hash_map::RandomState::new(),
        Default::default(),
    )
}

/// Default of `flows_per_client_per_minute`: a clinic of a hundred people behind one NAT,
/// each starting a sign-in every few minutes, stays well under it.
pub const DEFAULT_FLOWS_PER_CLIENT_PER_MINUTE: u32 = 600;
/// Default of `anonymous_state_quota`: bytes of sign-in flows and ceremony states that belong
/// to nobody known yet, in the whole store. A flow is about 1 KiB (8 KiB at most), so this is
/// some 60,000 sign-ins in ten minutes.
pub const DEFAULT_ANONYMOUS_STATE_QUOTA: u64 = 64 * 1024 * 1024;
/// Client addresses remembered by the flow limiter (least recently used ones are forgotten).
const CLIENTS: usize = 100_000;

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy. Nobody else's `X-Forwarded-For`
/// is believed. The list is read from the right, the end our own proxies wrote: an entry that
/// does not parse ends the walk at the last trusted hop, so a client cannot hide behind the
/// proxy's address by prepending junk. IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let values: Vec<&http::HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    let mut last = peer;
    for v in values.into_iter().rev() {
        let Ok(v) = v.to_str() else {
            return Some(last);
        };
        for part in v.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
                return Some(last);
            };
            if !is_trusted(&ip) {
                return Some(ip);
            }
            last = ip;
        }
    }
    Some(last)
}

/// The limiter key of an address: IPv4 as is, IPv6 by its /64 (one subscriber's prefix).
/// IPv4-mapped and 6to4 (`2002::/16`, whose /48 is one IPv4 address) addresses count as
/// their IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match (v6.to_ipv4_mapped(), v6.segments()) {
            (Some(v4), _) => IpAddr::V4(v4),
            (None, [0x2002, a, b, ..]) => IpAddr::V4(std::net::Ipv4Addr::from(
                (u32::from(a) << 16) | u32::from(b),
            )),
            (None, s) => IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)),
        },
    }
}

/// The key of a client's share of the store-wide anonymous quota: IPv4 as is, IPv6 by its
/// /48 (one site's allocation: an attacker holding one has 65,536 /64s).
pub fn site_key(ip: IpAddr) -> IpAddr {
    match client_key(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// IPv6 clients also share a bucket per /48 (one site's allocation), this many times a
/// client's: an attacker holding a /48 has 65,536 /64s, a hospital a few dozen LANs.
const PER_48: u32 = 10;

/// A token bucket per client key: `per_minute` flows a minute, in bursts of up to as many;
/// IPv6 keys also draw on their /48's bucket of [`PER_48`] times as many.
pub struct FlowLimiter {
    per_minute: u32,
    // Keyed by network and prefix length: a /64 and its /48 have the same address.
    buckets: ClientCache<(IpAddr, u8), (f64, Instant)>,
    // One lock for the read-modify-write of a bucket; held for nanoseconds.
    lock: Mutex<()>,
}

impl FlowLimiter {
    /// A limiter allowing `per_minute` new flows per client a minute (0: no limit).
    pub fn new(per_minute: u32) -> FlowLimiter {
        FlowLimiter {
            per_minute,
            buckets: client_cache(CLIENTS),
            lock: Mutex::new(()),
        }
    }

    /// Takes one token for `ip` (and its /48). `Err(seconds)`: over the limit, retry after
    /// that long. A refused request takes nothing.
    pub fn allow(&self, ip: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        let (Some(ip), true) = (ip, self.per_minute > 0) else {
            return Ok(());
        };
        let key = client_key(ip);
        let mut keys = vec![(key, 64u8, self.per_minute)];
        if key.is_ipv6() {
            keys.push((site_key(ip), 48, self.per_minute.saturating_mul(PER_48)));
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut refill = Vec::with_capacity(keys.len());
        let mut wait = 0u64;
        for &(net, len, per_minute) in &keys {
            let cap = f64::from(per_minute);
            let rate = cap / 60.0;
            let (tokens, at) = self.buckets.get(&(net, len)).unwrap_or((cap, now));
            let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(cap);
            if tokens < 1.0 {
                wait = wait.max(((1.0 - tokens) / rate).ceil().max(1.0) as u64);
            }
            refill.push(tokens);
        }
        let taken = if wait == 0 { 1.0 } else { 0.0 };
        for (&(net, len, _), tokens) in keys.iter().zip(refill) {
            self.buckets.insert((net, len), (tokens - taken, now));
        }
        if wait == 0 {
            Ok(())
        } else {
            Err(wait)
        }
    }
}

/// Failed sign-ins remembered per client (an IPv4 address, an IPv6 /64) and per browser
/// binding, for [`SignInFailures::FORGET`]. They never refuse a valid assertion: a WebAuthn
/// signature cannot be guessed, and a hospital NAT puts attacker and victim on one address.
/// They slow down the one who fails (a growing delay before the failure answer) and, past
/// [`SignInFailures::BINDING_LIMIT`], stop that browser binding from starting new ceremonies.
pub struct SignInFailures {
    counts: ClientCache<FailureKey, (u32, Instant)>,
    lock: Mutex<()>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    Client(IpAddr),
    Binding(String),
}

impl Default for SignInFailures {
    fn default() -> Self {
        SignInFailures {
            counts: client_cache(CLIENTS),
            lock: Mutex::new(()),
        }
    }
}

impl SignInFailures {
    /// How long a run of failures is remembered.
    pub const FORGET: std::time::Duration = std::time::Duration::from_secs(900);
    /// Failures a client or binding may have before its failure answers are delayed.
    pub const FREE: u32 = 20;
    /// Failures after which a browser binding may not start another ceremony until they are
    /// forgotten. The binding is the failing browser's own: nobody else's sign-in depends on it.
    pub const BINDING_LIMIT: u32 = 50;
    /// The longest delay of a failure answer.
    pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

    fn keys(ip: Option<IpAddr>, binding: &str) -> Vec<FailureKey> {
        let mut k = vec![FailureKey::Binding(binding.to_string())];
        k.extend(ip.map(|ip| FailureKey::Client(client_key(ip))));
        k
    }

    fn live(&self, key: &FailureKey) -> u32 {
        self.counts
            .get(key)
            .filter(|(_, since)| since.elapsed() < Self::FORGET)
            .map_or(0, |(n, _)| n)
    }

    /// Counts a failure of this client and binding; returns how long to wait before answering
    /// it (doubling from 250 ms past [`Self::FREE`], at most [`Self::MAX_DELAY`]).
    pub fn failed(&self, ip: Option<IpAddr>, binding: &str) -> std::time::Duration {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut worst = 0;
        for key in Self::keys(ip, binding) {
            let n = self.live(&key).saturating_add(1);
            let since = self
                .counts
                .get(&key)
                .filter(|(_, s)| s.elapsed() < Self::FORGET)
                .map_or_else(Instant::now, |(_, s)| s);
            self.counts.insert(key, (n, since));
            worst = worst.max(n);
        }
        let over = worst.saturating_sub(Self::FREE);
        if over == 0 {
            return std::time::Duration::ZERO;
        }
        let ms = 250u64.saturating_mul(1u64 << over.min(8).saturating_sub(1));
        std::time::Duration::from_millis(ms).min(Self::MAX_DELAY)
    }

    /// Whether this browser binding has failed too often to start another ceremony.
    pub fn binding_blocked(&self, binding: &str) -> bool {
        self.live(&FailureKey::Binding(binding.to_string())) >= Self::BINDING_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sign_in_failures_stay_bounded_under_a_flood_of_bindings_and_addresses() {
        let f = SignInFailures::default();
        for i in 0..(3 * CLIENTS as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            f.failed(Some(ip), &format!("binding-{i}"));
        }
        assert!(f.counts.len() <= CLIENTS, "{} entries", f.counts.len());
    }

    #[test]
    fn sign_in_failures_slow_the_failing_and_block_only_their_own_binding() {
        let f = SignInFailures::default();
        let nat: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..SignInFailures::FREE {
            assert_eq!(f.failed(Some(nat), "attacker"), Duration::ZERO);
        }
        assert_eq!(f.failed(Some(nat), "attacker"), Duration::from_millis(250));
        assert_eq!(f.failed(Some(nat), "attacker"), Duration::from_millis(500));
        for _ in 0..100 {
            assert!(f.failed(Some(nat), "attacker") <= SignInFailures::MAX_DELAY);
        }
        assert!(f.binding_blocked("attacker"));
        // The victim behind the same NAT: its own binding is not blocked (its failures would
        // be slowed, but a valid assertion is never refused).
        assert!(!f.binding_blocked("victim"));
        assert_eq!(f.failed(Some(nat), "victim"), SignInFailures::MAX_DELAY);
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let lb: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client_ip(peer("192.0.2.1"), &xff("203.0.113.9"), &lb),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_ip(peer("10.0.0.5"), &xff("203.0.113.9"), &lb),
            ip("203.0.113.9")
        );
        // A client cannot hide behind a value it wrote itself: the rightmost untrusted hop.
        assert_eq!(
            client_ip(
                peer("10.0.0.5"),
                &xff("198.51.100.1, 203.0.113.9, 10.0.0.7"),
                &lb
            ),
            ip("203.0.113.9")
        );
        // Junk the client prepended does not hide it behind the proxy's address.
        assert_eq!(
            client_ip(peer("10.0.0.5"), &xff("junk, 203.0.113.9"), &lb),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer("10.0.0.5"), &xff("203.0.113.9, 10.0.0.7, junk"), &lb),
            ip("10.0.0.5")
        );
        // A dual-stack listener sees the proxy as ::ffff:10.0.0.5: still the trusted proxy.
        assert_eq!(
            client_ip(peer("::ffff:10.0.0.5"), &xff("::ffff:203.0.113.9"), &lb),
            ip("203.0.113.9")
        );
        // Several header lines are one list, in order.
        let mut two = xff("198.51.100.1");
        two.append("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert_eq!(client_ip(peer("10.0.0.5"), &two, &lb), ip("203.0.113.9"));
        assert_eq!(
            client_ip(peer("10.0.0.5"), &HeaderMap::new(), &lb),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(peer("10.0.0.5"), &xff("203.0.113.9"), &[]),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(m), "192.0.2.1".parse::<IpAddr>().unwrap());
        // 6to4: one IPv4 address's /48, counted as that address.
        let t: IpAddr = "2002:c000:0201:7::1".parse().unwrap();
        assert_eq!(client_key(t), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(site_key(t), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(site_key(a), site_key(c), "one /48, one share");
        assert_ne!(
            site_key(a),
            site_key("2001:db8:2::1".parse().unwrap()),
            "another /48"
        );
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let l = FlowLimiter::new(60);
        let t0 = Instant::now();
        let ip = Some("192.0.2.1".parse().unwrap());
        for _ in 0..60 {
            assert!(l.allow(ip, t0).is_ok());
        }
        assert_eq!(l.allow(ip, t0), Err(1));
        assert!(
            l.allow(Some("192.0.2.2".parse().unwrap()), t0).is_ok(),
            "per client"
        );
        assert!(
            l.allow(ip, t0 + Duration::from_millis(1100)).is_ok(),
            "one a second"
        );
        assert!(l.allow(ip, t0 + Duration::from_millis(1100)).is_err());
        assert!(FlowLimiter::new(0).allow(ip, t0).is_ok(), "0 turns it off");
    }

    #[test]
    fn ipv6_64s_of_one_48_share_its_bucket() {
        let l = FlowLimiter::new(5);
        let t0 = Instant::now();
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let ok = (0..64)
            .filter(|i| l.allow(v6(&format!("2001:db8:7:{i:x}::1")), t0).is_ok())
            .count();
        assert_eq!(ok, 50, "10 x 5 flows for the whole /48");
        // Another /48 has its own; a /64 whose address is its /48's is a different bucket.
        assert!(l.allow(v6("2001:db8:8::1"), t0).is_ok());
        // A refused request took nothing: the /64 refused by its /48 still has its tokens.
        let l = FlowLimiter::new(1);
        for i in 0..10 {
            assert!(l.allow(v6(&format!("2001:db8:9:{i:x}::1")), t0).is_ok());
        }
        assert!(l.allow(v6("2001:db8:9:a::1"), t0).is_err());
        assert!(l
            .allow(v6("2001:db8:9:a::1"), t0 + Duration::from_secs(6))
            .is_ok());
    }
}
