//! Placement: which device a stage goes to, or why it must wait, or why it never can.
//!
//! The rule: a stage's need plus the device's context overhead must be at most 80% of
//! min(free memory, total minus what baton's running stages hold or were granted). The second
//! term matters because a stage that was just started has not allocated yet: the driver still
//! shows its memory as free, but it is spoken for. Among devices where it fits, the one with
//! the most room wins, which spreads stages over GPUs and lets small stages share one.

use baton_base::format_bytes;
use baton_memory::{DEFAULT_USABLE_FRACTION, DeviceSnapshot, ProcessMemory};

/// A device as placement sees it: a reading, and what baton's running stages claim on it.
#[derive(Debug, Clone)]
pub struct DeviceLoad {
    pub snapshot: DeviceSnapshot,
    /// Bytes granted to (or held by, if more) stages baton runs there now.
    pub tracked: u64,
    /// Processes holding memory there that are none of baton's running stages: named when a
    /// stage waits, since nothing baton does will free their memory.
    pub outside: Vec<ProcessMemory>,
}

impl DeviceLoad {
    /// The memory placement may hand out: min(free, total − tracked).
    pub fn room(&self) -> u64 {
        self.snapshot
            .free
            .min(self.snapshot.total.saturating_sub(self.tracked))
    }
}

/// The outcome of placing one stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Run it on the device with this index.
    Place { index: usize },
    /// Nothing fits now, but something would once memory comes free.
    Wait { reason: String },
    /// It would not fit even on an empty device.
    Never { reason: String },
}

/// Places a stage needing `need` bytes (plus `context` per process) on one of `devices`,
/// skipping the indices in `excluded` (devices it ran out of memory on).
pub fn place(
    stage: &str,
    need: u64,
    context: u64,
    devices: &[DeviceLoad],
    excluded: &[usize],
) -> Placement {
    let required = need.saturating_add(context);
    let usable = |bytes: u64| (bytes as f64 * DEFAULT_USABLE_FRACTION) as u64;
    let eligible: Vec<&DeviceLoad> = devices
        .iter()
        .filter(|d| !excluded.contains(&d.snapshot.index))
        .collect();
    let wants = format!(
        "stage '{stage}' needs {} + {} context = {}",
        format_bytes(need),
        format_bytes(context),
        format_bytes(required)
    );
    if let Some(best) = eligible
        .iter()
        .filter(|d| required <= usable(d.room()))
        .max_by_key(|d| (d.room(), std::cmp::Reverse(d.snapshot.index)))
    {
        return Placement::Place {
            index: best.snapshot.index,
        };
    }
    let could_ever: Vec<&&DeviceLoad> = eligible
        .iter()
        .filter(|d| required <= usable(d.snapshot.total))
        .collect();
    if could_ever.is_empty() {
        let largest = eligible.iter().max_by_key(|d| d.snapshot.total);
        return Placement::Never {
            reason: match largest {
                Some(d) => format!(
                    "{wants}, but the largest device, {}, has {} and at most 80% of it ({}) is handed out; declare a smaller memory need or use a larger GPU",
                    d.snapshot.label(),
                    format_bytes(d.snapshot.total),
                    format_bytes(usable(d.snapshot.total))
                ),
                None => format!("{wants}, and no device is left to try"),
            },
        };
    }
    let rooms: Vec<String> = could_ever
        .iter()
        .map(|d| {
            let mut room = format!(
                "{} has {} free, {} claimed by running stages, so {} can be handed out",
                d.snapshot.label(),
                format_bytes(d.snapshot.free),
                format_bytes(d.tracked),
                format_bytes(usable(d.room()))
            );
            if !d.outside.is_empty() {
                let holders: Vec<String> = d
                    .outside
                    .iter()
                    .take(5)
                    .map(|p| {
                        format!(
                            "pid {} ({}) {}",
                            p.pid,
                            p.name,
                            p.bytes.map_or("?".into(), format_bytes)
                        )
                    })
                    .collect();
                room.push_str(&format!(
                    "; held there by processes that are not baton's stages: {}",
                    holders.join(", ")
                ));
            }
            room
        })
        .collect();
    Placement::Wait {
        reason: format!("{wants}; {}", rooms.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_memory::BackendKind;

    const GIB: u64 = 1 << 30;

    fn load(index: usize, total: u64, free: u64, tracked: u64) -> DeviceLoad {
        DeviceLoad {
            snapshot: DeviceSnapshot {
                backend: BackendKind::Sim,
                index,
                name: "sim".into(),
                uuid: format!("sim-{index}"),
                total,
                used: total - free,
                free,
                reserved: 0,
                utilization: None,
                processes: vec![],
            },
            tracked,
            outside: vec![],
        }
    }

    #[test]
    fn the_device_with_most_room_wins() {
        let devices = [
            load(0, 24 * GIB, 10 * GIB, 0),
            load(1, 24 * GIB, 20 * GIB, 0),
        ];
        assert_eq!(
            place("a", 4 * GIB, GIB / 2, &devices, &[]),
            Placement::Place { index: 1 }
        );
        assert_eq!(
            place("a", 4 * GIB, GIB / 2, &devices, &[1]),
            Placement::Place { index: 0 }
        );
    }

    #[test]
    fn memory_granted_to_a_running_stage_counts_before_it_is_allocated() {
        // The driver shows 24 GiB free, but a stage was just granted 16 GiB.
        let devices = [load(0, 24 * GIB, 24 * GIB, 16 * GIB)];
        assert!(matches!(
            place("b", 8 * GIB, GIB / 2, &devices, &[]),
            Placement::Wait { .. }
        ));
        assert_eq!(
            place("b", 5 * GIB, GIB / 2, &devices, &[]),
            Placement::Place { index: 0 }
        );
    }

    #[test]
    fn wait_and_never_carry_the_numbers() {
        let devices = [load(0, 24 * GIB, 4 * GIB, 0), load(1, 24 * GIB, 2 * GIB, 0)];
        match place("images", 12 * GIB, GIB / 2, &devices, &[]) {
            Placement::Wait { reason } => {
                assert!(
                    reason.contains("stage 'images' needs 12.0 GiB + 512.0 MiB context = 12.5 GiB"),
                    "{reason}"
                );
                assert!(reason.contains("sim0 has 4.0 GiB free"), "{reason}");
                assert!(!reason.contains("not baton's stages"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Memory held by a process that is none of baton's stages is named.
        let mut busy = load(0, 24 * GIB, 3 * GIB, 0);
        busy.outside = vec![ProcessMemory {
            pid: 4242,
            name: "python3".into(),
            bytes: Some(21 * GIB),
        }];
        match place("images", 12 * GIB, GIB / 2, &[busy], &[]) {
            Placement::Wait { reason } => assert!(
                reason.contains(
                    "held there by processes that are not baton's stages: pid 4242 (python3) 21.0 GiB"
                ),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        match place("flux", 30 * GIB, GIB / 2, &devices, &[]) {
            Placement::Never { reason } => {
                assert!(
                    reason.contains("30.5 GiB")
                        && reason.contains("24.0 GiB")
                        && reason.contains("19.2 GiB"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
