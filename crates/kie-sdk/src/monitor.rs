//! Balance watching: threshold levels, burn rate, time to exhaustion, and alerts that
//! fire once per crossing instead of on every poll.
//!
//! ```
//! use kie_sdk::monitor::{Alert, BalanceMonitor, Level, Thresholds};
//! use kie_sdk::Credits;
//! use std::time::{Duration, Instant};
//!
//! let c = |s: &str| s.parse::<Credits>().unwrap();
//! let mut m = BalanceMonitor::new(Thresholds { warn: Some(c("50")), critical: Some(c("10")) });
//! let t0 = Instant::now();
//! let at = |mins: u64| t0 + Duration::from_secs(60 * mins);
//!
//! assert_eq!(m.observe(at(0), c("100")).alert, None);
//! let o = m.observe(at(60), c("40")); // 60 credits burnt in an hour
//! assert_eq!((o.level, o.alert), (Level::Warn, Some(Alert::Warn)));
//! assert_eq!(o.burn_per_hour, Some(60.0));
//! assert_eq!(o.time_to_exhaustion, Some(Duration::from_secs(40 * 60)));
//! assert_eq!(m.observe(at(70), c("30")).alert, None); // still warn: no second alert
//! assert_eq!(m.observe(at(80), c("5")).alert, Some(Alert::Critical));
//! assert_eq!(m.observe(at(90), c("500")).alert, Some(Alert::Recovered)); // topped up
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kie_wire::Credits;
use serde::Serialize;

/// Where the balance stands against the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Critical => "critical",
        }
    }

    /// Nagios-style exit status: 0 ok, 1 warning, 2 critical (3 is "unknown", used
    /// when the balance could not be read).
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Critical => 2,
        }
    }
}

/// Alert thresholds: a balance *below* `critical` is critical, below `warn` a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub warn: Option<Credits>,
    pub critical: Option<Credits>,
}

impl Thresholds {
    pub fn level(&self, balance: Credits) -> Level {
        if self.critical.is_some_and(|c| balance < c) {
            Level::Critical
        } else if self.warn.is_some_and(|w| balance < w) {
            Level::Warn
        } else {
            Level::Ok
        }
    }
}

/// A change of level worth telling someone about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alert {
    /// Entered the warning level (from ok, or back up from critical).
    Warn,
    /// Entered the critical level.
    Critical,
    /// Back to ok after a warning or critical level.
    Recovered,
}

impl Alert {
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::Warn => "warn",
            Alert::Critical => "critical",
            Alert::Recovered => "recovered",
        }
    }
}

/// What one poll tells.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub balance: Credits,
    pub level: Level,
    /// The level before this poll (`None` on the first).
    pub previous: Option<Level>,
    /// Set only when the level changed (or the first poll is not ok).
    pub alert: Option<Alert>,
    /// Credits spent per hour over the window; `None` until two polls apart in time.
    pub burn_per_hour: Option<f64>,
    /// At the current burn rate; `None` while nothing is being spent.
    pub time_to_exhaustion: Option<Duration>,
}

/// Keeps the recent balance history and the current level.
#[derive(Debug, Clone)]
pub struct BalanceMonitor {
    thresholds: Thresholds,
    window: Duration,
    samples: VecDeque<(Instant, Credits)>,
    level: Option<Level>,
}

impl BalanceMonitor {
    /// A monitor averaging the burn rate over the last hour.
    pub fn new(thresholds: Thresholds) -> Self {
        BalanceMonitor {
            thresholds,
            window: Duration::from_secs(3600),
            samples: VecDeque::new(),
            level: None,
        }
    }

    /// The span the burn rate is averaged over.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    pub fn level(&self) -> Option<Level> {
        self.level
    }

    /// Records a balance read at `at` (times must not go backwards).
    pub fn observe(&mut self, at: Instant, balance: Credits) -> Observation {
        // a top-up is not negative spending: the rate restarts from it
        if self.samples.back().is_some_and(|(_, b)| balance > *b) {
            self.samples.clear();
        }
        self.samples.push_back((at, balance));
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        let (burn_per_hour, time_to_exhaustion) = self.rate(balance);

        let level = self.thresholds.level(balance);
        let previous = self.level.replace(level);
        let alert = match (previous, level) {
            (None, Level::Ok) => None,
            (Some(p), l) if p == l => None,
            (Some(_), Level::Ok) => Some(Alert::Recovered),
            (_, Level::Warn) => Some(Alert::Warn),
            (_, Level::Critical) => Some(Alert::Critical),
        };
        Observation {
            balance,
            level,
            previous,
            alert,
            burn_per_hour,
            time_to_exhaustion,
        }
    }

    fn rate(&self, balance: Credits) -> (Option<f64>, Option<Duration>) {
        let (Some((t0, b0)), Some((t1, b1))) = (self.samples.front(), self.samples.back()) else {
            return (None, None);
        };
        let secs = t1.duration_since(*t0).as_secs_f64();
        if secs <= 0.0 {
            return (None, None);
        }
        let spent = (b0.hundredths() - b1.hundredths()) as f64; // hundredths, ≥ 0 here
        if spent <= 0.0 {
            return (Some(0.0), None);
        }
        // hundredths/s × 3600 s/h ÷ 100 = credits/h; multiplied first to stay exact for
        // round numbers
        let per_hour = spent * 36.0 / secs;
        let left = balance.hundredths().max(0) as f64;
        (
            Some(per_hour),
            Some(Duration::from_secs_f64(left * secs / spent)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Credits {
        s.parse().unwrap()
    }

    #[test]
    fn alerts_once_per_crossing_and_once_on_recovery() {
        let mut m = BalanceMonitor::new(Thresholds {
            warn: Some(c("50")),
            critical: Some(c("10")),
        });
        let t0 = Instant::now();
        let seq = [
            "100", "60", "49.99", "45", "9", "8", "20", "30", "50", "70", "5",
        ];
        let alerts: Vec<_> = seq
            .iter()
            .enumerate()
            .map(|(i, b)| {
                m.observe(t0 + Duration::from_secs(i as u64), c(b))
                    .alert
                    .map(Alert::as_str)
            })
            .collect();
        assert_eq!(
            alerts,
            vec![
                None,
                None,
                Some("warn"),
                None,
                Some("critical"),
                None,
                Some("warn"),
                None,
                Some("recovered"),
                None,
                Some("critical")
            ]
        );
    }

    #[test]
    fn first_poll_below_threshold_alerts() {
        let mut m = BalanceMonitor::new(Thresholds {
            warn: Some(c("50")),
            critical: None,
        });
        assert_eq!(m.observe(Instant::now(), c("3")).alert, Some(Alert::Warn));
    }

    #[test]
    fn burn_rate_window_and_top_up() {
        let mut m = BalanceMonitor::new(Thresholds::default()).window(Duration::from_secs(100));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(m.observe(at(0), c("100")).burn_per_hour, None);
        // 1 credit per 36 s = 100 per hour
        let o = m.observe(at(36), c("99"));
        assert_eq!(o.burn_per_hour, Some(100.0));
        assert_eq!(o.time_to_exhaustion, Some(Duration::from_secs(99 * 36)));
        // old samples leave the window: rate over [36, 236]
        m.observe(at(136), c("98"));
        let o = m.observe(at(236), c("96"));
        assert_eq!(o.burn_per_hour, Some(72.0));
        // a top-up restarts the rate
        let o = m.observe(at(300), c("200"));
        assert_eq!(o.burn_per_hour, None);
        let o = m.observe(at(400), c("200"));
        assert_eq!((o.burn_per_hour, o.time_to_exhaustion), (Some(0.0), None));
    }
}
