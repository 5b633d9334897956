//! Mode machines (see `shared/design/modes.md`): each subsystem runs in Target, Degraded, Floor
//! or Recovery, chosen from the evidence it holds, with hysteresis so that a noisy signal does
//! not make it flap.
//!
//! What it is not: it measures nothing. The subsystem classifies its evidence into a
//! [`Signal`] and feeds it here with the time; the machine answers with the transition to make
//! (and log, and export).
//!
//! Driving it:
//! 1. Create a [`ModeMachine`] with a [`Hysteresis`] per subsystem.
//! 2. On every new piece of evidence (and periodically), call [`ModeMachine::handle_signal`].
//! 3. Apply and log any [`Transition`] returned; behaviour follows [`ModeMachine::mode`].
#![deny(missing_docs, unreachable_pub)]

use serde::Serialize;

pub mod slow_disk;

/// The four modes of a subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Normal: evidence fresh, guarantees as designed.
    Target,
    /// Partial failure: serving with weaker, labelled guarantees.
    Degraded,
    /// Survival: the minimum, safely (read-only, last known good).
    Floor,
    /// Leaving Degraded or Floor: re-establishing evidence, watching for regression.
    Recovery,
}

impl Mode {
    /// The mode's name as shown in APIs, metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Target => "target",
            Mode::Degraded => "degraded",
            Mode::Floor => "floor",
            Mode::Recovery => "recovery",
        }
    }
}

/// What the subsystem's evidence says right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Everything the subsystem depends on works.
    Healthy,
    /// Something is impaired (slow disk, stale contact) but the subsystem can serve.
    Impaired,
    /// The subsystem cannot do its job (disk full, no quorum).
    Failed,
}

/// Hysteresis settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// How long the signal must stay healthy before Degraded/Floor moves to Recovery.
    pub healthy_ms_before_recovery: u64,
    /// How long Recovery must stay healthy before returning to Target.
    pub recovery_dwell_ms: u64,
    /// If the subsystem falls back within this time of reaching Target, the next recovery
    /// dwell doubles (exponential backoff on flapping).
    pub flap_window_ms: u64,
    /// The longest recovery dwell backoff may reach.
    pub recovery_dwell_ms_max: u64,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            healthy_ms_before_recovery: 1_000,
            recovery_dwell_ms: 5_000,
            flap_window_ms: 60_000,
            recovery_dwell_ms_max: 300_000,
        }
    }
}

/// A mode change the caller must apply and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The mode left.
    pub from: Mode,
    /// The mode entered.
    pub to: Mode,
    /// When.
    pub at_ms: u64,
}

/// One subsystem's mode machine.
#[derive(Debug, Clone)]
pub struct ModeMachine {
    hysteresis: Hysteresis,
    mode: Mode,
    entered_ms: u64,
    healthy_since_ms: Option<u64>,
    recovery_dwell_ms: u64,
    reached_target_ms: Option<u64>,
}

impl ModeMachine {
    /// A machine in Target at `now_ms`.
    ///
    /// # Panics
    /// Panics if the hysteresis has a zero recovery dwell or a maximum below it.
    pub fn new(hysteresis: Hysteresis, now_ms: u64) -> Self {
        assert!(hysteresis.recovery_dwell_ms > 0);
        assert!(hysteresis.recovery_dwell_ms_max >= hysteresis.recovery_dwell_ms);
        ModeMachine {
            hysteresis,
            mode: Mode::Target,
            entered_ms: now_ms,
            healthy_since_ms: Some(now_ms),
            recovery_dwell_ms: hysteresis.recovery_dwell_ms,
            reached_target_ms: None,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// When the current mode was entered.
    pub fn entered_ms(&self) -> u64 {
        self.entered_ms
    }

    /// Feeds the current signal; returns the transition if the mode changes.
    pub fn handle_signal(&mut self, now_ms: u64, signal: Signal) -> Option<Transition> {
        if signal == Signal::Healthy {
            self.healthy_since_ms.get_or_insert(now_ms);
        } else {
            self.healthy_since_ms = None;
        }
        let healthy_for_ms = self
            .healthy_since_ms
            .map(|since| now_ms.saturating_sub(since));
        let next = match (self.mode, signal) {
            (Mode::Floor, Signal::Failed) => None,
            (_, Signal::Failed) => Some(Mode::Floor),
            (Mode::Target | Mode::Recovery, Signal::Impaired) => Some(Mode::Degraded),
            (Mode::Degraded | Mode::Floor, Signal::Impaired) => None,
            (Mode::Degraded | Mode::Floor, Signal::Healthy) => healthy_for_ms
                .filter(|ms| *ms >= self.hysteresis.healthy_ms_before_recovery)
                .map(|_| Mode::Recovery),
            (Mode::Recovery, Signal::Healthy) => (now_ms.saturating_sub(self.entered_ms)
                >= self.recovery_dwell_ms)
                .then_some(Mode::Target),
            (Mode::Target, Signal::Healthy) => None,
        };
        let to = next?;
        Some(self.enter(now_ms, to))
    }

    fn enter(&mut self, now_ms: u64, to: Mode) -> Transition {
        let from = self.mode;
        assert_ne!(from, to);
        assert!(
            !(from == Mode::Floor && to == Mode::Target),
            "Floor -> Target is forbidden"
        );
        if matches!(to, Mode::Degraded | Mode::Floor) {
            let flapped = self
                .reached_target_ms
                .is_some_and(|at| now_ms.saturating_sub(at) < self.hysteresis.flap_window_ms);
            if flapped {
                self.recovery_dwell_ms =
                    (self.recovery_dwell_ms * 2).min(self.hysteresis.recovery_dwell_ms_max);
            }
        }
        if to == Mode::Target {
            self.reached_target_ms = Some(now_ms);
        }
        self.mode = to;
        self.entered_ms = now_ms;
        Transition {
            from,
            to,
            at_ms: now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> ModeMachine {
        ModeMachine::new(Hysteresis::default(), 0)
    }

    #[test]
    fn failed_signal_enters_floor_then_recovers_through_recovery() {
        let mut m = machine();
        assert_eq!(
            m.handle_signal(10, Signal::Failed).map(|t| t.to),
            Some(Mode::Floor)
        );
        assert_eq!(
            m.handle_signal(20, Signal::Healthy),
            None,
            "must stay healthy a while"
        );
        assert_eq!(
            m.handle_signal(1_020, Signal::Healthy).map(|t| t.to),
            Some(Mode::Recovery)
        );
        assert_eq!(
            m.handle_signal(3_000, Signal::Healthy),
            None,
            "dwell in recovery"
        );
        assert_eq!(
            m.handle_signal(6_020, Signal::Healthy).map(|t| t.to),
            Some(Mode::Target)
        );
    }

    #[test]
    fn impaired_in_recovery_falls_back_to_degraded() {
        let mut m = machine();
        m.handle_signal(0, Signal::Impaired);
        m.handle_signal(1, Signal::Healthy);
        m.handle_signal(1_001, Signal::Healthy);
        assert_eq!(m.mode(), Mode::Recovery);
        assert_eq!(
            m.handle_signal(1_002, Signal::Impaired).map(|t| t.to),
            Some(Mode::Degraded)
        );
    }

    #[test]
    fn noisy_signal_does_not_leave_floor() {
        let mut m = machine();
        m.handle_signal(0, Signal::Failed);
        for t in 1..500u64 {
            let signal = if t % 2 == 0 {
                Signal::Healthy
            } else {
                Signal::Failed
            };
            assert!(m.handle_signal(t * 100, signal).is_none());
        }
        assert_eq!(m.mode(), Mode::Floor);
    }

    #[test]
    fn flapping_doubles_recovery_dwell() {
        let mut m = machine();
        m.handle_signal(0, Signal::Failed);
        m.handle_signal(1, Signal::Healthy);
        m.handle_signal(1_001, Signal::Healthy);
        m.handle_signal(6_001, Signal::Healthy);
        assert_eq!(m.mode(), Mode::Target);
        m.handle_signal(7_000, Signal::Failed);
        m.handle_signal(7_001, Signal::Healthy);
        m.handle_signal(8_001, Signal::Healthy);
        assert_eq!(m.mode(), Mode::Recovery);
        assert_eq!(
            m.handle_signal(13_001, Signal::Healthy),
            None,
            "dwell doubled to 10 s"
        );
        assert_eq!(
            m.handle_signal(18_001, Signal::Healthy).map(|t| t.to),
            Some(Mode::Target)
        );
    }
}
