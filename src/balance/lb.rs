//! Choosing one host from a host list: Envoy's round robin, least request,
//! random, ring hash and maglev balancers. A `Balancer` is built once per host
//! list and shared by all workers; health, ejection and retry predicates arrive
//! per pick through `eligible`. Priority levels belong to `priority`, request
//! hashes to `hash`; this module does no I/O and keeps no per-request state.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io::Write as _,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Mutex, PoisonError, TryLockError,
    },
};

use super::hash::xxh64;

pub const DEFAULT_CHOICE_COUNT: u32 = 2;
pub const DEFAULT_ACTIVE_REQUEST_BIAS: f64 = 1.0;
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's validation limit for both ring sizes.
pub const RING_SIZE_LIMIT: u64 = 8_388_608;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Envoy's validation limit for the maglev table size (itself prime).
pub const MAGLEV_TABLE_SIZE_LIMIT: u64 = 5_000_011;

/// Weighted round robin precomputes one cycle of its schedule when the cycle
/// (sum of weights divided by their gcd) is at most this long, else it runs a
/// live EDF scheduler.
const MAX_SEQUENCE: u64 = 1 << 16;
/// Ring entries walked (ring hash) or alternate hashes tried (maglev) past an
/// ineligible host before falling back to a scan of the host list.
const HASH_WALK: usize = 64;
/// Random draws before falling back to a scan of the host list.
const RANDOM_DRAWS: usize = 8;
/// Envoy keeps one EDF scheduler per worker; we keep up to this many, shared.
const MAX_EDF_SHARDS: usize = 8;

/// The cluster's `lb_policy` with its config, defaults as Envoy's.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest {
        choice_count: u32,
        active_request_bias: f64,
    },
    Random,
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
    },
    Maglev {
        table_size: u64,
    },
}

impl LbPolicy {
    pub fn least_request() -> LbPolicy {
        LbPolicy::LeastRequest {
            choice_count: DEFAULT_CHOICE_COUNT,
            active_request_bias: DEFAULT_ACTIVE_REQUEST_BIAS,
        }
    }

    pub fn ring_hash() -> LbPolicy {
        LbPolicy::RingHash {
            min_ring_size: DEFAULT_MIN_RING_SIZE,
            max_ring_size: DEFAULT_MAX_RING_SIZE,
        }
    }

    pub fn maglev() -> LbPolicy {
        LbPolicy::Maglev {
            table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }

    /// Envoy's `lb_policy` name for this policy.
    pub fn name(&self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "ROUND_ROBIN",
            LbPolicy::LeastRequest { .. } => "LEAST_REQUEST",
            LbPolicy::Random => "RANDOM",
            LbPolicy::RingHash { .. } => "RING_HASH",
            LbPolicy::Maglev { .. } => "MAGLEV",
        }
    }

    /// Whether picks use the request hash (the consistent-hash balancers).
    pub fn needs_hash(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }

    /// The checks Envoy applies when it accepts the cluster (proto validation
    /// and load balancer construction), naming the offending field.
    /// `active_request_bias` is never rejected: as Envoy, a negative or NaN
    /// bias is used as 1.0.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            LbPolicy::LeastRequest { choice_count, .. } if choice_count < 2 => {
                Err(format!("least_request_lb_config.choice_count must be at least 2, got {choice_count}"))
            }
            LbPolicy::RingHash { min_ring_size, .. } if min_ring_size > RING_SIZE_LIMIT => Err(format!(
                "ring_hash_lb_config.minimum_ring_size must not exceed {RING_SIZE_LIMIT}, got {min_ring_size}"
            )),
            LbPolicy::RingHash { max_ring_size, .. } if max_ring_size > RING_SIZE_LIMIT => Err(format!(
                "ring_hash_lb_config.maximum_ring_size must not exceed {RING_SIZE_LIMIT}, got {max_ring_size}"
            )),
            LbPolicy::RingHash { min_ring_size, max_ring_size } if min_ring_size > max_ring_size => Err(format!(
                "ring_hash_lb_config.minimum_ring_size ({min_ring_size}) must not exceed maximum_ring_size ({max_ring_size})"
            )),
            LbPolicy::Maglev { table_size } if table_size > MAGLEV_TABLE_SIZE_LIMIT => Err(format!(
                "maglev_lb_config.table_size must not exceed {MAGLEV_TABLE_SIZE_LIMIT}, got {table_size}"
            )),
            LbPolicy::Maglev { table_size } if !is_prime(table_size) => {
                Err(format!("maglev_lb_config.table_size must be a prime number, got {table_size}"))
            }
            _ => Ok(()),
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|&d| d <= n / d).all(|d| !n.is_multiple_of(d))
}

/// One host as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// What ring hash and maglev hash: Envoy's `address()->asString()`, "ip:port"
    /// ("[v6]:port" for IPv6).
    pub key: String,
    /// `load_balancing_weight`, at least 1 (0 is treated as 1).
    pub weight: u32,
}

/// A balancer over a fixed host list; `pick` returns indexes into that list.
/// Send + Sync: round-robin cursors are atomics, EDF schedulers sit behind
/// mutexes, everything else is immutable after `new`.
#[derive(Debug)]
pub struct Balancer {
    hosts: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Round robin with equal weights: Envoy's unweighted index rotation.
    Rotation(AtomicUsize),
    /// Weighted round robin: one precomputed EDF cycle of host indexes, and
    /// the weights.
    Sequence(AtomicUsize, Vec<u32>, Vec<u32>),
    /// Weighted round robin whose cycle is too long to precompute.
    Edf(EdfShards, Vec<u32>),
    /// Least request with equal weights: Envoy's N_CHOICES (P2C) sampling.
    Choices(u32),
    /// Least request with unequal weights: EDF on weight / (active + 1)^bias.
    WeightedLeastRequest(EdfShards, Vec<u32>, f64),
    Random,
    Ring(Vec<RingEntry>),
    Maglev(Vec<u32>),
}

#[derive(Debug, Clone, Copy)]
struct RingEntry {
    hash: u64,
    host: u32,
}

impl Balancer {
    /// Builds the balancer. Assumes `policy.validate()` passed; out-of-range
    /// values are clamped (ring sizes) or replaced by the default (a maglev
    /// table size that is not prime) rather than panicking.
    pub fn new(policy: &LbPolicy, hosts: &[HostInfo]) -> Balancer {
        let n = hosts.len();
        if n == 0 {
            return Balancer {
                hosts: 0,
                kind: Kind::Random,
            };
        }
        let weights: Vec<u32> = hosts.iter().map(|h| h.weight.max(1)).collect();
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        let float_weights: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
        // As Envoy, each balancer starts its rotation at a random point so
        // proxies started together do not move in step.
        let cursor = || AtomicUsize::new(fastrand::usize(..));
        let kind = match *policy {
            LbPolicy::RoundRobin if equal => Kind::Rotation(cursor()),
            LbPolicy::RoundRobin => match weighted_sequence(&weights) {
                Some(slots) => Kind::Sequence(cursor(), slots, weights),
                None => Kind::Edf(EdfShards::new(&float_weights), weights),
            },
            LbPolicy::LeastRequest { choice_count, .. } if equal => Kind::Choices(choice_count.max(1)),
            LbPolicy::LeastRequest {
                active_request_bias: bias,
                ..
            } => {
                let bias = if bias.is_nan() || bias < 0.0 {
                    DEFAULT_ACTIVE_REQUEST_BIAS
                } else {
                    bias
                };
                Kind::WeightedLeastRequest(EdfShards::new(&float_weights), weights, bias)
            }
            LbPolicy::Random => Kind::Random,
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => Kind::Ring(build_ring(hosts, &weights, min_ring_size, max_ring_size)),
            LbPolicy::Maglev { table_size } => Kind::Maglev(build_maglev(hosts, &weights, table_size)),
        };
        Balancer { hosts: n, kind }
    }

    pub fn len(&self) -> usize {
        self.hosts
    }

    pub fn is_empty(&self) -> bool {
        self.hosts == 0
    }

    /// Picks a host index, skipping hosts for which `eligible` is false; None
    /// when no host is eligible (or the list is empty). `hash` is the request
    /// hash for ring hash and maglev (None: a random one, as Envoy) and is
    /// ignored by the others; `active(i)` is host i's active requests, read by
    /// least request only. Allocation-free; each skipped host costs one
    /// `eligible` call, and scans are bounded by the host count.
    pub fn pick(
        &self,
        hash: Option<u64>,
        active: &dyn Fn(usize) -> u64,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.hosts;
        if n == 0 {
            return None;
        }
        match &self.kind {
            Kind::Rotation(cursor) => walk_cycle(cursor, n, n, |slot| slot, eligible),
            Kind::Sequence(cursor, slots, weights) => {
                walk_cycle(cursor, slots.len(), 2 * n, |slot| slots[slot] as usize, eligible)
                    .or_else(|| weighted_draw(n, |i| f64::from(weights[i]), eligible))
            }
            Kind::Edf(edf, weights) => edf
                .pick(n, |i| f64::from(weights[i]), eligible)
                .or_else(|| weighted_draw(n, |i| f64::from(weights[i]), eligible)),
            Kind::Choices(choice_count) => least_of_choices(*choice_count, n, active, eligible),
            Kind::WeightedLeastRequest(edf, weights, bias) => {
                let weight = |i: usize| least_request_weight(weights[i], active(i), *bias);
                edf.pick(n, weight, eligible)
                    .or_else(|| weighted_draw(n, weight, eligible))
            }
            Kind::Random => (0..RANDOM_DRAWS)
                .map(|_| fastrand::usize(..n))
                .find(|&i| eligible(i))
                .or_else(|| scan_from(fastrand::usize(..n), n, eligible)),
            Kind::Ring(ring) => pick_ring(ring, hash.unwrap_or_else(|| fastrand::u64(..)), n, eligible),
            Kind::Maglev(table) => pick_maglev(table, hash.unwrap_or_else(|| fastrand::u64(..)), n, eligible),
        }
    }
}

/// The first eligible host at or after `start`, wrapping once round the list.
fn scan_from(start: usize, n: usize, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
}

/// A draw among the eligible hosts in proportion to `weight`, for when a
/// schedule's bounded walk met only ineligible hosts (a heavy host ejected
/// fills most of the cycle): the hosts left keep their relative weights, as
/// Envoy's schedule rebuilt over healthy hosts gives them. O(n), off the
/// common path.
fn weighted_draw(n: usize, weight: impl Fn(usize) -> f64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let total: f64 = (0..n).filter(|&i| eligible(i)).map(&weight).sum();
    if total.is_nan() || total <= 0.0 {
        return scan_from(fastrand::usize(..n), n, eligible);
    }
    let mut point = fastrand::f64() * total;
    let mut last = None;
    for i in (0..n).filter(|&i| eligible(i)) {
        let w = weight(i);
        if point < w {
            return Some(i);
        }
        point -= w;
        last = Some(i);
    }
    last
}

/// Round robin over a cycle of `len` slots. Slots skipped for ineligible hosts
/// are consumed from the shared cursor too, so the hosts that remain keep
/// equal (or weighted) shares instead of the next host inheriting the skipped
/// one's turns, as when Envoy rebuilds its schedule over healthy hosts only.
fn walk_cycle(
    cursor: &AtomicUsize,
    len: usize,
    limit: usize,
    host_at: impl Fn(usize) -> usize,
    eligible: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let start = cursor.fetch_add(1, Relaxed);
    for step in 0..len.min(limit) {
        let host = host_at(start.wrapping_add(step) % len);
        if eligible(host) {
            if step > 0 {
                cursor.fetch_add(step, Relaxed);
            }
            return Some(host);
        }
    }
    None
}

/// One cycle of weighted round robin in EDF order (host i's k-th turn has
/// deadline k / w_i; ties go to the lower index), so each host appears exactly
/// `w_i / gcd` times. None when the cycle would be longer than `MAX_SEQUENCE`.
fn weighted_sequence(weights: &[u32]) -> Option<Vec<u32>> {
    let gcd = weights.iter().fold(0u32, |a, &b| {
        let (mut a, mut b) = (a, b);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    });
    let reduced: Vec<u32> = weights.iter().map(|&w| w / gcd.max(1)).collect();
    if reduced.iter().map(|&w| u64::from(w)).sum::<u64>() > MAX_SEQUENCE {
        return None;
    }
    let mut turns: Vec<(u32, u32, u32)> = Vec::new();
    for (host, &w) in reduced.iter().enumerate() {
        turns.extend((1..=w).map(|k| (k, w, host as u32)));
    }
    turns.sort_unstable_by(|a, b| {
        (u64::from(a.0) * u64::from(b.1))
            .cmp(&(u64::from(b.0) * u64::from(a.1)))
            .then(a.2.cmp(&b.2))
    });
    Some(turns.into_iter().map(|t| t.2).collect())
}

/// Envoy's least-request host weight: `weight / (active + 1)^active_request_bias`,
/// with the bias-1 and bias-0 shortcuts and its guard against `active + 1` overflowing.
fn least_request_weight(weight: u32, active: u64, bias: f64) -> f64 {
    let weight = f64::from(weight);
    let active = active.saturating_add(1) as f64;
    if bias == 1.0 {
        weight / active
    } else if bias != 0.0 {
        weight / active.powf(bias)
    } else {
        weight
    }
}

/// Envoy's N_CHOICES selection: sample `choice_count` hosts uniformly with
/// replacement (even when that is more than the host count) and keep the
/// first with the fewest active requests. Samples that land on ineligible
/// hosts are redrawn, a bounded number of times; if none was eligible, scan.
fn least_of_choices(
    choice_count: u32,
    n: usize,
    active: &dyn Fn(usize) -> u64,
    eligible: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let wanted = choice_count as usize;
    let mut best: Option<(usize, u64)> = None;
    let mut taken = 0;
    for _ in 0..wanted * 4 + 8 {
        let i = fastrand::usize(..n);
        if !eligible(i) {
            continue;
        }
        let a = active(i);
        if best.is_none_or(|(_, b)| a < b) {
            best = Some((i, a));
        }
        taken += 1;
        if taken == wanted {
            break;
        }
    }
    best.map(|(i, _)| i).or_else(|| least_active_scan(n, active, eligible))
}

/// As Envoy's FULL_SCAN: the eligible host with the fewest active requests,
/// ties broken uniformly by reservoir sampling.
fn least_active_scan(n: usize, active: &dyn Fn(usize) -> u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    let mut ties = 0;
    for i in (0..n).filter(|&i| eligible(i)) {
        let a = active(i);
        match best {
            Some((_, b)) if a > b => {}
            Some((_, b)) if a == b => {
                ties += 1;
                if fastrand::usize(..ties) == 0 {
                    best = Some((i, a));
                }
            }
            _ => {
                best = Some((i, a));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Earliest-deadline-first scheduling as Envoy's `EdfScheduler`: an entry's
/// deadline is the scheduler's time plus 1 / weight; a pick pops the earliest
/// (FIFO among equal deadlines) and re-adds it with its current weight. Heap
/// entries are `Reverse((deadline bits, insertion order, host))`: deadlines are
/// never negative, and non-negative f64s order like their bit patterns.
#[derive(Debug, Default)]
struct Edf {
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    now: f64,
    order: u64,
}

impl Edf {
    fn add(&mut self, host: usize, weight: f64) {
        let weight = if weight > 0.0 { weight } else { f64::MIN_POSITIVE };
        let deadline = self.now + 1.0 / weight;
        self.queue.push(Reverse((deadline.to_bits(), self.order, host as u32)));
        self.order += 1;
    }

    fn pick_and_add(&mut self, weight: &dyn Fn(usize) -> f64) -> Option<usize> {
        let Reverse((deadline, _, host)) = self.queue.pop()?;
        self.now = f64::from_bits(deadline);
        let host = host as usize;
        self.add(host, weight(host));
        Some(host)
    }
}

/// Several independent EDF schedulers, as Envoy has one per worker thread;
/// a pick takes whichever is free, so workers rarely wait on each other.
#[derive(Debug)]
struct EdfShards(Box<[Mutex<Edf>]>);

impl EdfShards {
    fn new(weights: &[f64]) -> EdfShards {
        let count = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_EDF_SHARDS);
        let shards = (0..count)
            .map(|_| {
                let mut edf = Edf::default();
                for (host, &w) in weights.iter().enumerate() {
                    edf.add(host, w);
                }
                // As Envoy's createWithPicks: start each schedule at a random point.
                for _ in 0..fastrand::usize(..weights.len().max(1)) {
                    edf.pick_and_add(&|i| weights[i]);
                }
                Mutex::new(edf)
            })
            .collect();
        EdfShards(shards)
    }

    /// The next eligible host from one schedule, popping at most `n` entries;
    /// ineligible hosts are re-added as if picked, so their turns are consumed.
    fn pick(&self, n: usize, weight: impl Fn(usize) -> f64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let shards = &self.0;
        let start = fastrand::usize(..shards.len());
        let mut guard = None;
        for k in 0..shards.len() {
            match shards[(start + k) % shards.len()].try_lock() {
                Ok(g) => guard = Some(g),
                Err(TryLockError::Poisoned(p)) => guard = Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => continue,
            }
            break;
        }
        let mut edf = match guard {
            Some(g) => g,
            None => shards[start].lock().unwrap_or_else(PoisonError::into_inner),
        };
        (0..n).map_while(|_| edf.pick_and_add(&weight)).find(|&h| eligible(h))
    }
}

/// Envoy's ring: normalized weights w_i = weight_i / sum; scale so the lightest
/// host gets a whole number of entries (ceil(min_w * min_ring_size) / min_w),
/// capped at max_ring_size; then walk the hosts keeping running totals so host
/// i gets about scale * w_i entries, each the xxHash64 of "key_n".
fn build_ring(hosts: &[HostInfo], weights: &[u32], min_ring_size: u64, max_ring_size: u64) -> Vec<RingEntry> {
    let min_ring_size = min_ring_size.min(RING_SIZE_LIMIT) as f64;
    let max_ring_size = max_ring_size.min(RING_SIZE_LIMIT) as f64;
    let sum = weights.iter().map(|&w| u64::from(w)).sum::<u64>() as f64;
    let normalized: Vec<f64> = weights.iter().map(|&w| f64::from(w) / sum).collect();
    let min_weight = normalized.iter().copied().fold(1.0, f64::min);
    let scale = ((min_weight * min_ring_size).ceil() / min_weight).min(max_ring_size);

    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let mut key = Vec::with_capacity(64);
    let (mut current, mut target) = (0.0, 0.0);
    for (host, (info, w)) in hosts.iter().zip(&normalized).enumerate() {
        key.clear();
        key.extend_from_slice(info.key.as_bytes());
        key.push(b'_');
        let prefix = key.len();
        target += scale * w;
        let mut i: u64 = 0;
        while current < target {
            key.truncate(prefix);
            // Writing to a Vec cannot fail.
            let _ = write!(key, "{i}");
            ring.push(RingEntry {
                hash: xxh64(&key, 0),
                host: host as u32,
            });
            i += 1;
            current += 1.0;
        }
    }
    ring.sort_unstable_by_key(|e| (e.hash, e.host));
    ring
}

/// The first ring entry at or after `hash`, wrapping (ketama, as Envoy). An
/// ineligible host is passed over by moving along the ring, as Envoy's retry
/// host predicate does (entry + attempt).
fn pick_ring(ring: &[RingEntry], hash: u64, n: usize, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let mut at = ring.partition_point(|e| e.hash < hash);
    if at == ring.len() {
        at = 0;
    }
    (0..ring.len().min(HASH_WALK))
        .map(|step| ring[(at + step) % ring.len()].host as usize)
        .find(|&h| eligible(h))
        .or_else(|| scan_from(ring[at].host as usize + 1, n, eligible))
}

/// Envoy's maglev table (maglev_lb.cc, OriginalMaglevTable): hosts in key
/// order, each with offset = xxh64(key, 0) % M and skip = xxh64(key, 1) %
/// (M - 1) + 1; in each round a host whose normalized weight is the largest
/// takes a slot, lighter hosts every max_w / w_i rounds; a host takes the next
/// free slot of its permutation (offset + skip * j) % M.
fn build_maglev(hosts: &[HostInfo], weights: &[u32], table_size: u64) -> Vec<u32> {
    struct Builder {
        host: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    let size = if table_size <= MAGLEV_TABLE_SIZE_LIMIT && is_prime(table_size) {
        table_size
    } else {
        DEFAULT_MAGLEV_TABLE_SIZE
    };
    let sum = weights.iter().map(|&w| u64::from(w)).sum::<u64>() as f64;
    let max_weight = weights.iter().map(|&w| f64::from(w) / sum).fold(0.0, f64::max);
    let mut order: Vec<usize> = (0..hosts.len()).collect();
    order.sort_by(|&a, &b| hosts[a].key.cmp(&hosts[b].key).then(a.cmp(&b)));
    let mut builders: Vec<Builder> = order
        .into_iter()
        .map(|i| {
            let key = hosts[i].key.as_bytes();
            Builder {
                host: i as u32,
                offset: xxh64(key, 0) % size,
                skip: xxh64(key, 1) % (size - 1) + 1,
                weight: f64::from(weights[i]) / sum,
                target: 0.0,
                next: 0,
            }
        })
        .collect();

    const FREE: u32 = u32::MAX;
    let mut table = vec![FREE; size as usize];
    let mut filled: u64 = 0;
    let mut round: u32 = 1;
    while filled < size {
        for b in builders.iter_mut() {
            if filled == size {
                break;
            }
            if f64::from(round) * b.weight < b.target {
                continue;
            }
            b.target += max_weight;
            let mut slot = (b.offset + b.skip * b.next) % size;
            while table[slot as usize] != FREE {
                b.next += 1;
                slot = (b.offset + b.skip * b.next) % size;
            }
            table[slot as usize] = b.host;
            b.next += 1;
            filled += 1;
        }
        round += 1;
    }
    table
}

/// `table[hash % M]`. An ineligible host is passed over the way Envoy's retry
/// host predicate does it: attempt k looks up `hash ^ (2^64 - k)`.
fn pick_maglev(table: &[u32], hash: u64, n: usize, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let size = table.len() as u64;
    let at = |h: u64| table[(h % size) as usize] as usize;
    let first = at(hash);
    if eligible(first) {
        return Some(first);
    }
    (1..=HASH_WALK as u64)
        .map(|attempt| at(hash ^ attempt.wrapping_neg()))
        .find(|&h| eligible(h))
        .or_else(|| scan_from(first + 1, n, eligible))
}

#[cfg(test)]
#[path = "lb/tests.rs"]
mod tests;
