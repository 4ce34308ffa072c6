//! The dead-letter guard: when the share of dead-lettered records over a sliding
//! window passes a threshold (a bad deploy, a broken upstream), consumption stops
//! for a cool-down and the service says so loudly instead of emptying its input
//! into the dead-letter topic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// Outcomes remembered (the window).
    pub window: usize,
    /// Outcomes needed in the window before the guard may trip.
    pub min_samples: usize,
    /// Dead-letter share above which the guard trips (0 < ratio ≤ 1).
    pub max_dead_letter_ratio: f64,
    /// How long consumption stays held once tripped.
    pub cooldown_ms: u64,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            window: 200,
            min_samples: 50,
            max_dead_letter_ratio: 0.5,
            cooldown_ms: 60_000,
        }
    }
}

pub struct DeadLetterGuard {
    settings: GuardSettings,
    outcomes: VecDeque<bool>,
    dead: usize,
    tripped_until: Option<Instant>,
}

impl DeadLetterGuard {
    pub fn new(settings: GuardSettings) -> Self {
        Self {
            settings,
            outcomes: VecDeque::new(),
            dead: 0,
            tripped_until: None,
        }
    }

    /// Records one finished record; returns true if this trips the guard.
    pub fn record(&mut self, dead_lettered: bool) -> bool {
        self.outcomes.push_back(dead_lettered);
        self.dead += usize::from(dead_lettered);
        while self.outcomes.len() > self.settings.window {
            if self.outcomes.pop_front() == Some(true) {
                self.dead -= 1;
            }
        }
        let n = self.outcomes.len();
        if self.tripped_until.is_none()
            && n >= self.settings.min_samples
            && self.dead as f64 / n as f64 > self.settings.max_dead_letter_ratio
        {
            self.tripped_until =
                Some(Instant::now() + Duration::from_millis(self.settings.cooldown_ms));
            return true;
        }
        false
    }

    pub fn ratio(&self) -> f64 {
        if self.outcomes.is_empty() {
            0.0
        } else {
            self.dead as f64 / self.outcomes.len() as f64
        }
    }

    /// Whether consumption must stay held now; clears the window when the cool-down ends.
    pub fn holding(&mut self) -> bool {
        match self.tripped_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.tripped_until = None;
                self.outcomes.clear();
                self.dead = 0;
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_over_the_ratio_after_min_samples_and_recovers() {
        let mut g = DeadLetterGuard::new(GuardSettings {
            window: 10,
            min_samples: 4,
            max_dead_letter_ratio: 0.5,
            cooldown_ms: 20,
        });
        assert!(!g.record(true));
        assert!(!g.record(true));
        assert!(!g.record(true), "below min_samples");
        assert!(g.record(false), "3/4 > 0.5 trips");
        assert!(g.holding());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!g.holding(), "cool-down over");
        assert_eq!(g.ratio(), 0.0);
    }

    #[test]
    fn healthy_traffic_never_trips() {
        let mut g = DeadLetterGuard::new(GuardSettings::default());
        for i in 0..1000 {
            assert!(!g.record(i % 10 == 0));
        }
    }
}
