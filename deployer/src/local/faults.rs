//! The fault each region is in, shared by the region's API front, the AWS proxies and the control
//! API, with the history of what was injected when.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A region's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serving normally.
    None,
    /// The region is gone: its API refuses connections and every AWS call signed for it fails.
    Outage,
    /// The health path answers 503; the API still serves.
    Unhealthy,
    /// Every API request waits this long first.
    Slow(Duration),
}

impl Fault {
    /// Parses `outage`, `unhealthy`, `slow=DURATION`, `recover` (= none) or `none`.
    pub fn parse(text: &str) -> Result<Fault, String> {
        match text {
            "outage" => Ok(Fault::Outage),
            "unhealthy" => Ok(Fault::Unhealthy),
            "recover" | "none" => Ok(Fault::None),
            _ => match text.strip_prefix("slow=") {
                Some(d) => tworegion_common::duration::parse_duration(d)
                    .map(Fault::Slow)
                    .map_err(|e| format!("slow=DURATION: {e}")),
                None => Err(format!(
                    "unknown fault {text:?}: use outage, unhealthy, slow=DURATION (e.g. slow=500ms) \
                     or recover"
                )),
            },
        }
    }

    /// The fault as `parse` reads it.
    pub fn label(self) -> String {
        match self {
            Fault::None => "none".to_owned(),
            Fault::Outage => "outage".to_owned(),
            Fault::Unhealthy => "unhealthy".to_owned(),
            Fault::Slow(d) => format!("slow={}ms", d.as_millis()),
        }
    }
}

/// One change of a region's fault.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u128,
    /// The region.
    pub region: String,
    /// The fault from then on (`none` after a recover).
    pub fault: String,
}

/// (each region's fault, the history, outages begun per region)
type State = (
    BTreeMap<String, Fault>,
    Vec<FaultEvent>,
    BTreeMap<String, u64>,
);

/// Every region's fault.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Faults {
    /// No faults in `regions`.
    pub fn new(regions: &[String]) -> Faults {
        let map = regions.iter().map(|r| (r.clone(), Fault::None)).collect();
        Faults {
            state: Mutex::new((map, Vec::new(), BTreeMap::new())),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-written: recover it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The region's fault (`None` for regions not in the environment).
    pub fn get(&self, region: &str) -> Fault {
        self.lock().0.get(region).copied().unwrap_or(Fault::None)
    }

    /// Whether the region is in an outage.
    pub fn is_down(&self, region: &str) -> bool {
        self.get(region) == Fault::Outage
    }

    /// Sets the region's fault; a region not in the environment is refused.
    pub fn set(&self, region: &str, fault: Fault) -> Result<(), String> {
        let mut state = self.lock();
        let regions: Vec<String> = state.0.keys().cloned().collect();
        let Some(slot) = state.0.get_mut(region) else {
            return Err(format!(
                "region {region:?} is not in this environment: use {}",
                regions.join(" or ")
            ));
        };
        let began = fault == Fault::Outage && *slot != Fault::Outage;
        *slot = fault;
        if began {
            *state.2.entry(region.to_owned()).or_default() += 1;
        }
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        state.1.push(FaultEvent {
            at_unix_ms,
            region: region.to_owned(),
            fault: fault.label(),
        });
        drop(state);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// How many outages of the region have begun (a front compares it with what it saw, so an
    /// outage that began and ended between two looks still drops its connections).
    pub fn outages(&self, region: &str) -> u64 {
        self.lock().2.get(region).copied().unwrap_or(0)
    }

    /// Every region's fault label.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.lock()
            .0
            .iter()
            .map(|(r, f)| (r.clone(), f.label()))
            .collect()
    }

    /// What was injected when.
    pub fn history(&self) -> Vec<FaultEvent> {
        self.lock().1.clone()
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_set() {
        assert_eq!(Fault::parse("outage"), Ok(Fault::Outage));
        assert_eq!(
            Fault::parse("slow=250ms"),
            Ok(Fault::Slow(Duration::from_millis(250)))
        );
        assert_eq!(Fault::parse("recover"), Ok(Fault::None));
        assert!(Fault::parse("slow=").unwrap_err().contains("slow=DURATION"));
        assert!(Fault::parse("down").unwrap_err().contains("outage"));
        let faults = Faults::new(&["us-east-1".into(), "us-west-2".into()]);
        let mut rx = faults.subscribe();
        faults.set("us-east-1", Fault::Outage).unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(faults.is_down("us-east-1"));
        assert!(!faults.is_down("us-west-2"));
        let refused = faults.set("eu-west-1", Fault::Outage).unwrap_err();
        assert!(refused.contains("us-east-1 or us-west-2"), "{refused}");
        assert_eq!(faults.history().len(), 1);
        // Outages are counted as they begin, so a quick outage-recover is still seen.
        assert_eq!(faults.outages("us-east-1"), 1);
        faults.set("us-east-1", Fault::Outage).unwrap();
        assert_eq!(faults.outages("us-east-1"), 1, "still the same outage");
        faults.set("us-east-1", Fault::None).unwrap();
        faults.set("us-east-1", Fault::Outage).unwrap();
        faults.set("us-east-1", Fault::None).unwrap();
        assert_eq!(faults.outages("us-east-1"), 2);
        assert_eq!(faults.outages("us-west-2"), 0);
        assert_eq!(faults.labels()["us-east-1"], "none");
    }
}
