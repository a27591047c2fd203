//! Priority levels: how much traffic each level of a cluster gets from the
//! health of its hosts, and when a level is in panic (Envoy's
//! `LoadBalancerBase::recalculatePerPriorityState` / `recalculatePerPriorityPanic`).
//! Pure arithmetic over host counts; choosing a host within a level is `lb`'s job.

/// An endpoint's health as EDS (`LbEndpoint.health_status`) or health checking reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthStatus {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl HealthStatus {
    /// Counts as healthy: as Envoy, UNKNOWN and HEALTHY are healthy; UNHEALTHY,
    /// DRAINING and TIMEOUT fail EDS health. DEGRADED is not healthy: it is
    /// used only after healthy capacity runs out (see [`HealthStatus::degraded`]).
    pub fn routable(self) -> bool {
        matches!(self, HealthStatus::Healthy | HealthStatus::Unknown)
    }

    /// Counts in a level's `degraded` total (Envoy's DEGRADED_EDS_HEALTH).
    pub fn degraded(self) -> bool {
        self == HealthStatus::Degraded
    }

    /// Counts in a level's `excluded` total: as Envoy, a DRAINING host is left
    /// out of the level's health arithmetic altogether (EDS_STATUS_DRAINING).
    pub fn excluded(self) -> bool {
        self == HealthStatus::Draining
    }
}

/// Envoy's default `ClusterLoadAssignment.Policy.overprovisioning_factor` (1.4, in percent).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;
/// Envoy's default `CommonLbConfig.healthy_panic_threshold`, in percent.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// Host counts of one priority level. `total` is every host; `healthy` are
/// routable and not ejected; `degraded` are degraded and not ejected;
/// `excluded` (draining) hosts are part of `total` but, as Envoy's excluded
/// hosts, left out of the percentages (they still count when a total panic
/// spreads load by host count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelHealth {
    pub total: u32,
    pub healthy: u32,
    pub degraded: u32,
    pub excluded: u32,
}

/// Which hosts of the chosen level to balance over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostSubset {
    Healthy,
    /// Chosen through degraded load: the level's healthy capacity was not enough.
    Degraded,
    /// The level is in panic: every host, whatever its health (as Envoy's
    /// AllHosts, draining hosts included).
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelChoice {
    pub level: usize,
    pub hosts: HostSubset,
}

/// Per-level load percentages and panic flags. `healthy_load` and
/// `degraded_load` together sum to 100 when any level has a host, else all are 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub healthy_load: Vec<u32>,
    pub degraded_load: Vec<u32>,
    pub panic: Vec<bool>,
}

/// The plan for `levels` (index 0 = highest priority) with the default
/// overprovisioning factor. `panic_threshold` is `healthy_panic_threshold` in
/// percent; 0 disables panic.
pub fn plan(levels: &[LevelHealth], panic_threshold: f64) -> Plan {
    plan_with_overprovisioning(levels, panic_threshold, DEFAULT_OVERPROVISIONING_FACTOR)
}

/// As [`plan`], with an explicit `overprovisioning_factor` (percent, 140 = 1.4).
pub fn plan_with_overprovisioning(levels: &[LevelHealth], panic_threshold: f64, overprovisioning: u32) -> Plan {
    let n = levels.len();
    let mut out = Plan {
        healthy_load: vec![0; n],
        degraded_load: vec![0; n],
        panic: vec![false; n],
    };
    if levels.iter().all(|l| l.total == 0) {
        return out;
    }
    // Envoy: min(100, factor * healthy / counted) in integer arithmetic, per
    // level, where counted = hosts - excluded hosts.
    let counted = |l: &LevelHealth| l.total.saturating_sub(l.excluded);
    let availability = |count: u32, l: &LevelHealth| -> u32 {
        let total = counted(l);
        if total == 0 {
            return 0;
        }
        (u64::from(overprovisioning) * u64::from(count.min(total)) / u64::from(total)).min(100) as u32
    };
    let health: Vec<u32> = levels.iter().map(|l| availability(l.healthy, l)).collect();
    let degraded: Vec<u32> = levels.iter().map(|l| availability(l.degraded, l)).collect();
    // "Normalized total availability": the sum over levels, capped at 100.
    let normalized = (health.iter().sum::<u32>() + degraded.iter().sum::<u32>()).min(100);

    if normalized > 0 {
        let (first_healthy, left) = distribute(&mut out.healthy_load, &health, 100, normalized);
        let (first_degraded, left) = distribute(&mut out.degraded_load, &degraded, left, normalized);
        // Rounding leftovers go to the first level with healthy, else degraded, availability.
        if let Some(i) = first_healthy {
            out.healthy_load[i] += left;
        } else if let Some(i) = first_degraded {
            out.degraded_load[i] += left;
        }
    }

    // PROTOBUF_PERCENT_TO_ROUNDED_INTEGER, capped at 100 like the runtime override.
    let threshold = if panic_threshold.is_nan() {
        0.0
    } else {
        panic_threshold.round().clamp(0.0, 100.0)
    };
    if threshold == 0.0 && normalized == 0 {
        // Envoy: panic disabled and nothing available. Loads must still sum to
        // 100, so P0 gets it all; no host there is healthy, so the pick fails
        // ("no healthy upstream").
        out.healthy_load[0] = 100;
        return out;
    }
    // Envoy (recalculatePerPriorityPanic; arch_overview "Panic threshold"): panic
    // is ignored while normalized total availability is 100; below that, a level
    // is in panic when its (healthy + degraded) percentage of hosts, without the
    // overprovisioning factor, is under the threshold. An empty level counts as 0%.
    for (i, l) in levels.iter().enumerate() {
        out.panic[i] = normalized < 100 && {
            let total = counted(l);
            let pct = |c: u32| {
                if total == 0 {
                    0.0
                } else {
                    100.0 * f64::from(c.min(total)) / f64::from(total)
                }
            };
            pct(l.healthy) + pct(l.degraded) < threshold
        };
    }
    if out.panic.iter().all(|&p| p) {
        // Total panic: load follows host counts, ignoring health.
        let total: u64 = levels.iter().map(|l| u64::from(l.total)).sum();
        let mut left = 100;
        for (i, l) in levels.iter().enumerate() {
            out.healthy_load[i] = (100 * u64::from(l.total) / total) as u32;
            out.degraded_load[i] = 0;
            left -= out.healthy_load[i];
        }
        if let Some(first) = levels.iter().position(|l| l.total > 0) {
            out.healthy_load[first] += left;
        }
    }
    out
}

/// Envoy's `distributeLoad`: from the highest priority down, each level takes
/// `availability * 100 / normalized` of what is left. Returns the first level
/// with any availability and the load still unassigned.
fn distribute(load: &mut [u32], availability: &[u32], mut left: u32, normalized: u32) -> (Option<usize>, u32) {
    let mut first = None;
    for (i, &a) in availability.iter().enumerate() {
        if first.is_none() && a > 0 {
            first = Some(i);
        }
        load[i] = left.min(a * 100 / normalized);
        left -= load[i];
    }
    (first, left)
}

impl Plan {
    /// The level (and host subset) for a request, as Envoy's `choosePriority`:
    /// `random % 100 + 1` walks the cumulative healthy loads, then the degraded
    /// ones. Envoy's hashing balancers (ring hash, maglev) pass the request hash
    /// here instead of a random number, so a key sticks to one level. None when
    /// the cluster has no hosts.
    pub fn choose(&self, random: u64) -> Option<LevelChoice> {
        let point = (random % 100 + 1) as u32;
        let mut seen = 0;
        let healthy = self.healthy_load.iter().map(|&l| (l, HostSubset::Healthy));
        let degraded = self.degraded_load.iter().map(|&l| (l, HostSubset::Degraded));
        let n = self.healthy_load.len();
        for (i, (load, hosts)) in healthy.chain(degraded).enumerate() {
            seen += load;
            if point <= seen {
                let level = i % n.max(1);
                let hosts = if self.panic[level] { HostSubset::All } else { hosts };
                return Some(LevelChoice { level, hosts });
            }
        }
        None
    }

    /// The chosen level only; see [`Plan::choose`].
    pub fn choose_level(&self, random: u64) -> Option<usize> {
        self.choose(random).map(|c| c.level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvl(total: u32, healthy: u32) -> LevelHealth {
        LevelHealth {
            total,
            healthy,
            ..LevelHealth::default()
        }
    }

    // Each case checks Envoy's per-priority load and panic arithmetic; expected
    // values follow load_balancer_impl.cc (its integer rounding), which is what
    // the arch_overview "Priority levels" / "Panic threshold" pages describe.
    #[test]
    fn plan_matches_envoy() {
        struct Case {
            what: &'static str,
            levels: Vec<LevelHealth>,
            threshold: f64,
            healthy: Vec<u32>,
            degraded: Vec<u32>,
            panic: Vec<bool>,
        }
        let d = |total, healthy, degraded| LevelHealth {
            total,
            healthy,
            degraded,
            excluded: 0,
        };
        let x = |total, healthy, excluded| LevelHealth {
            total,
            healthy,
            degraded: 0,
            excluded,
        };
        let cases = vec![
            Case {
                what: "all healthy P0 takes everything",
                levels: vec![lvl(10, 10), lvl(10, 10)],
                threshold: 50.0,
                healthy: vec![100, 0],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "72% healthy * 1.4 caps at 100",
                levels: vec![lvl(100, 72), lvl(10, 10)],
                threshold: 50.0,
                healthy: vec![100, 0],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "71% healthy -> 99/1",
                levels: vec![lvl(100, 71), lvl(10, 10)],
                threshold: 50.0,
                healthy: vec![99, 1],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "50% healthy -> 70/30",
                levels: vec![lvl(10, 5), lvl(10, 10)],
                threshold: 50.0,
                healthy: vec![70, 30],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "25% healthy P0 is under the threshold but total health is 100: no panic",
                levels: vec![lvl(100, 25), lvl(10, 10)],
                threshold: 50.0,
                healthy: vec![35, 65],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "P0 empty of healthy hosts -> all to P1",
                levels: vec![lvl(10, 0), lvl(10, 10)],
                threshold: 50.0,
                healthy: vec![0, 100],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "both 25%: normalized 70, both in panic -> total panic by host count",
                levels: vec![lvl(100, 25), lvl(100, 25)],
                threshold: 50.0,
                healthy: vec![50, 50],
                degraded: vec![0, 0],
                panic: vec![true, true],
            },
            Case {
                what: "5%/65%: normalized 98, rounding leftover to first healthy level, only P0 panics",
                levels: vec![lvl(100, 5), lvl(100, 65)],
                threshold: 50.0,
                healthy: vec![8, 92],
                degraded: vec![0, 0],
                panic: vec![true, false],
            },
            Case {
                what: "three levels all degraded in health -> normalized by the total",
                levels: vec![lvl(10, 1), lvl(10, 2), lvl(10, 1)],
                threshold: 0.0,
                healthy: vec![25, 50, 25],
                degraded: vec![0, 0, 0],
                panic: vec![false, false, false],
            },
            Case {
                what: "normalization rounding leftover goes to the first healthy level",
                levels: vec![lvl(10, 1), lvl(10, 1), lvl(10, 1)],
                threshold: 0.0,
                healthy: vec![34, 33, 33],
                degraded: vec![0, 0, 0],
                panic: vec![false, false, false],
            },
            Case {
                what: "all unhealthy, threshold 50: total panic by host count",
                levels: vec![lvl(10, 0), lvl(30, 0)],
                threshold: 50.0,
                healthy: vec![25, 75],
                degraded: vec![0, 0],
                panic: vec![true, true],
            },
            Case {
                what: "all unhealthy, threshold 0: no panic, P0 nominally 100",
                levels: vec![lvl(10, 0), lvl(30, 0)],
                threshold: 0.0,
                healthy: vec![100, 0],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "single level 30% healthy: in panic, keeps all load",
                levels: vec![lvl(10, 3)],
                threshold: 50.0,
                healthy: vec![100],
                degraded: vec![0],
                panic: vec![true],
            },
            Case {
                what: "threshold 0 disables panic",
                levels: vec![lvl(10, 3)],
                threshold: 0.0,
                healthy: vec![100],
                degraded: vec![0],
                panic: vec![false],
            },
            Case {
                what: "threshold rounds: 50.4 -> 50, 50% healthy is not under it",
                levels: vec![lvl(10, 5)],
                threshold: 50.4,
                healthy: vec![100],
                degraded: vec![0],
                panic: vec![false],
            },
            Case {
                what: "threshold rounds: 50.5 -> 51, 50% healthy is under it",
                levels: vec![lvl(10, 5)],
                threshold: 50.5,
                healthy: vec![100],
                degraded: vec![0],
                panic: vec![true],
            },
            Case {
                what: "empty lower level still counts as panicking when health < 100",
                levels: vec![lvl(10, 3), lvl(0, 0)],
                threshold: 50.0,
                healthy: vec![100, 0],
                degraded: vec![0, 0],
                panic: vec![true, true],
            },
            Case {
                what: "healthy hosts in P1 beat degraded hosts in P0",
                levels: vec![d(10, 0, 10), d(10, 10, 0)],
                threshold: 50.0,
                healthy: vec![0, 100],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "degraded capacity fills what healthy capacity cannot",
                levels: vec![d(10, 2, 8)],
                threshold: 50.0,
                healthy: vec![28],
                degraded: vec![72],
                panic: vec![false],
            },
            Case {
                what: "draining (excluded) hosts are left out of the health percentage",
                levels: vec![x(10, 5, 5), lvl(10, 10)],
                threshold: 50.0,
                healthy: vec![100, 0],
                degraded: vec![0, 0],
                panic: vec![false, false],
            },
            Case {
                what: "total panic spreads load by host count, excluded hosts included",
                levels: vec![x(30, 0, 20), lvl(10, 0)],
                threshold: 50.0,
                healthy: vec![75, 25],
                degraded: vec![0, 0],
                panic: vec![true, true],
            },
            Case {
                what: "Envoy's own example: 10/20/10% health, 20/10/0% degraded -> 16/28/14 + 28/14/0",
                levels: vec![d(14, 1, 2), d(14, 2, 1), d(14, 1, 0)],
                threshold: 0.0,
                healthy: vec![16, 28, 14],
                degraded: vec![28, 14, 0],
                panic: vec![false, false, false],
            },
            Case {
                what: "degraded hosts count toward the panic check",
                levels: vec![d(10, 2, 3)],
                threshold: 50.0,
                healthy: vec![40],
                degraded: vec![60],
                panic: vec![false],
            },
        ];
        for c in cases {
            let p = plan(&c.levels, c.threshold);
            assert_eq!(p.healthy_load, c.healthy, "{}: healthy load", c.what);
            assert_eq!(p.degraded_load, c.degraded, "{}: degraded load", c.what);
            assert_eq!(p.panic, c.panic, "{}: panic", c.what);
            let sum: u32 = p.healthy_load.iter().chain(&p.degraded_load).sum();
            assert_eq!(sum, 100, "{}: loads sum to 100", c.what);
        }
    }

    // Envoy with no hosts at all: nothing to route to, whatever the threshold.
    #[test]
    fn no_hosts_no_level() {
        for threshold in [0.0, 50.0] {
            for levels in [vec![], vec![lvl(0, 0)], vec![lvl(0, 0), lvl(0, 0)]] {
                let p = plan(&levels, threshold);
                assert!(p.healthy_load.iter().chain(&p.degraded_load).all(|&l| l == 0));
                assert_eq!(p.choose(0), None);
                assert_eq!(p.choose_level(99), None);
            }
        }
    }

    // Envoy choosePriority (ring_hash_lb_test BasicFailover): with 70/30,
    // random 69 -> P0 and 71 -> P1; degraded load is walked after healthy load;
    // a level in panic balances over all its hosts.
    #[test]
    fn choose_walks_cumulative_load() {
        let p = plan(&[lvl(2, 1), lvl(1, 1)], 50.0);
        assert_eq!(p.healthy_load, vec![70, 30]);
        let cases: &[(u64, usize)] = &[(0, 0), (69, 0), (70, 1), (71, 1), (99, 1), (169, 0), (u64::MAX, 0)];
        for &(random, level) in cases {
            assert_eq!(
                p.choose(random),
                Some(LevelChoice {
                    level,
                    hosts: HostSubset::Healthy
                }),
                "{random}"
            );
        }
        let mostly_degraded = LevelHealth {
            degraded: 8,
            ..lvl(10, 2)
        };
        let p = plan(&[mostly_degraded], 50.0);
        assert_eq!(p.choose(27).map(|c| c.hosts), Some(HostSubset::Healthy));
        assert_eq!(p.choose(28).map(|c| c.hosts), Some(HostSubset::Degraded));
        let p = plan(&[lvl(10, 3)], 50.0);
        assert_eq!(
            p.choose(5),
            Some(LevelChoice {
                level: 0,
                hosts: HostSubset::All
            })
        );
    }

    // Envoy: UNKNOWN and HEALTHY route; DRAINING, TIMEOUT, UNHEALTHY never;
    // DEGRADED only as degraded capacity; DRAINING is excluded from the counts.
    #[test]
    fn health_status_routability() {
        use HealthStatus::*;
        let cases = [
            (Unknown, true, false, false),
            (Healthy, true, false, false),
            (Unhealthy, false, false, false),
            (Draining, false, false, true),
            (Timeout, false, false, false),
            (Degraded, false, true, false),
        ];
        for (status, routable, degraded, excluded) in cases {
            assert_eq!(status.routable(), routable, "{status:?}");
            assert_eq!(status.degraded(), degraded, "{status:?}");
            assert_eq!(status.excluded(), excluded, "{status:?}");
        }
        assert_eq!(HealthStatus::default(), Unknown);
    }
}
