//! Property tests over random sequences of agent operations and boots, for every boot
//! loader's rules:
//!
//! - an armed slot that never comes up healthy is abandoned for the old slot within its
//!   tries;
//! - a slot marked good stays bootable until it is marked bad;
//! - no sequence without an explicit mark-bad leaves no bootable slot;
//! - after every step the store survives its encoding: parse(serialize(x)) == x, and
//!   serializing again gives the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_bootflags::android::BootloaderControl;
use keel_bootflags::bls::{EntryName, SystemdBoot};
use keel_bootflags::gpt::GptAttributes;
use keel_bootflags::grubenv::GrubEnv;
use keel_bootflags::rauc::{RaucGrub, RaucUboot};
use keel_bootflags::ubootenv::{Layout, UbootEnv};
use keel_bootflags::{AbControl, PriorityPolicy, PrioritySlots, Slot, SlotState};
use proptest::prelude::*;

/// A store under test: its rules, its encoding, and how many boots an armed slot gets.
trait Store: AbControl + Clone + std::fmt::Debug {
    /// Encode and decode again; must give an equal store with identical bytes.
    fn reencode(&self) -> Self;
    /// Boots an armed slot gets when armed with `tries` (`None`: the default).
    fn budget(&self, tries: Option<u8>) -> u32;
    /// Whether the old slot is reached within the budget even if a healthy slot sometimes
    /// fails to mark itself good (false where the boot loader's own rules retry the armed
    /// slot then: RAUC's scripts reset their counters when every slot was tried).
    const STRONG: bool;
}

#[derive(Clone, Debug)]
struct Gpt(PrioritySlots);

/// `AbControl` for a newtype over `PrioritySlots`: every rule from the inner value, and
/// the boot decision from `$boot` (so a test can break just that rule).
macro_rules! delegate_ab_control {
    ($t:ty, $boot:expr) => {
        impl AbControl for $t {
            fn slot_count(&self) -> usize {
                self.0.slot_count()
            }
            fn state(&self, s: Slot) -> keel_bootflags::Result<SlotState> {
                self.0.state(s)
            }
            fn is_bootable(&self, s: Slot) -> keel_bootflags::Result<bool> {
                self.0.is_bootable(s)
            }
            fn boot(&mut self) -> Option<Slot> {
                let boot: fn(&mut PrioritySlots) -> Option<Slot> = $boot;
                boot(&mut self.0)
            }
            fn set_active(&mut self, s: Slot, t: Option<u8>) -> keel_bootflags::Result<()> {
                self.0.set_active(s, t)
            }
            fn mark_good(&mut self, s: Slot) -> keel_bootflags::Result<()> {
                self.0.mark_good(s)
            }
            fn mark_bad(&mut self, s: Slot) -> keel_bootflags::Result<()> {
                self.0.mark_bad(s)
            }
        }
    };
}

delegate_ab_control!(Gpt, |p| p.boot());

impl Store for Gpt {
    fn reencode(&self) -> Self {
        // Each slot's state goes through the attribute field, with other bits set.
        let slots = self
            .0
            .slots
            .iter()
            .map(|s| {
                let a = GptAttributes(0x9000_0000_0000_0005).with_state(*s);
                let b = GptAttributes::from_le_bytes(a.to_le_bytes());
                assert_eq!(b.0 & !keel_bootflags::gpt::BOOT_BITS, 0x9000_0000_0000_0005);
                b.state()
            })
            .collect();
        Gpt(PrioritySlots::new(slots, self.0.policy).unwrap())
    }
    fn budget(&self, tries: Option<u8>) -> u32 {
        u32::from(tries.unwrap_or(self.0.policy.default_tries()))
    }
    const STRONG: bool = true;
}

impl Store for BootloaderControl {
    fn reencode(&self) -> Self {
        let b = self.to_bytes();
        let back = BootloaderControl::parse(&b).unwrap();
        assert_eq!(back.to_bytes(), b);
        back
    }
    fn budget(&self, tries: Option<u8>) -> u32 {
        u32::from(tries.unwrap_or(6))
    }
    const STRONG: bool = true;
}

impl Store for RaucGrub {
    fn reencode(&self) -> Self {
        let block = self.to_env().unwrap().to_bytes().unwrap();
        let back = RaucGrub::from_env(GrubEnv::parse(&block).unwrap(), self.slot_count()).unwrap();
        assert_eq!(back.to_env().unwrap().to_bytes().unwrap(), block);
        back
    }
    fn budget(&self, _: Option<u8>) -> u32 {
        1
    }
    const STRONG: bool = false;
}

impl Store for RaucUboot {
    fn reencode(&self) -> Self {
        for redundant in [false, true] {
            let l = Layout {
                size: 4096,
                redundant,
            };
            let bytes = self.to_env().unwrap().to_copy(l, 9).unwrap();
            let c = UbootEnv::parse_copy(&bytes, l).unwrap();
            let back = RaucUboot::from_env(c.env, self.slot_count()).unwrap();
            assert_eq!(back.to_env().unwrap().to_copy(l, 9).unwrap(), bytes);
            if redundant {
                return back;
            }
        }
        unreachable!()
    }
    fn budget(&self, tries: Option<u8>) -> u32 {
        u32::from(tries.unwrap_or(3))
    }
    const STRONG: bool = false;
}

impl Store for SystemdBoot {
    fn reencode(&self) -> Self {
        let names: Vec<EntryName> = Slot::all(self.slot_count())
            .map(|s| EntryName::parse(&self.entry(s).unwrap().file_name()).unwrap())
            .collect();
        for s in Slot::all(self.slot_count()) {
            assert_eq!(&names[s.index()], self.entry(s).unwrap());
        }
        self.clone()
    }
    fn budget(&self, tries: Option<u8>) -> u32 {
        u32::from(tries.unwrap_or(3))
    }
    const STRONG: bool = true;
}

#[derive(Clone, Debug)]
enum Op {
    /// The boot loader boots; a healthy slot marks itself good unless `skip_mark`.
    Boot { skip_mark: bool },
    /// Write new content (good or broken) to a slot that is not running and arm it.
    Update { good: bool, tries: Option<u8> },
    /// set-active without invalidating (re-activating an existing slot).
    Reactivate { slot: usize, tries: Option<u8> },
    /// Explicit mark-bad of a slot that is not running.
    MarkBad { slot: usize },
}

fn ops(allow_mark_bad: bool) -> impl Strategy<Value = Vec<Op>> {
    let tries = prop::option::of(1u8..=3);
    let op = prop_oneof![
        4 => any::<bool>().prop_map(|skip_mark| Op::Boot { skip_mark }),
        1 => (any::<bool>(), tries.clone()).prop_map(|(good, tries)| Op::Update { good, tries }),
        1 => (0usize..4, tries).prop_map(|(slot, tries)| Op::Reactivate { slot, tries }),
        1 => (0usize..4).prop_map(|slot| Op::MarkBad { slot }),
    ];
    prop::collection::vec(op, 1..80).prop_map(move |v| {
        v.into_iter()
            .filter(|o| allow_mark_bad || !matches!(o, Op::MarkBad { .. } | Op::Update { .. }))
            .collect()
    })
}

/// Run `ops` on `store` (slot A good and booted, the others empty) and check the
/// properties after every step. `strong`: healthy slots may skip marking themselves good.
fn run<S: Store>(mut store: S, ops: &[Op], strong: bool) {
    let n = store.slot_count();
    // What each slot holds: good content comes up healthy, broken content never does.
    let mut content_good = vec![false; n];
    content_good[0] = true;
    // Slots marked good since they were last invalidated.
    let mut good = vec![false; n];
    good[0] = true;
    // For a slot armed with broken content: its budget and boots so far.
    let mut armed: Vec<Option<(u32, u32)>> = vec![None; n];
    let mut booted = Slot::A;
    let mut any_mark_bad = false;

    for op in ops {
        match *op {
            Op::Boot { skip_mark } => {
                let preview = store.next_boot();
                let got = store.boot();
                assert_eq!(preview, got, "next_boot must predict boot");
                let Some(s) = got else {
                    assert!(
                        any_mark_bad,
                        "no bootable slot without a mark-bad: {store:?}"
                    );
                    continue;
                };
                booted = s;
                // The promise needs an old slot to fall back to: one marked good.
                let fallback = Slot::all(n).any(|t| t != s && good[t.index()]);
                if let Some((budget, boots)) = &mut armed[s.index()] {
                    *boots += 1;
                    if fallback && (!strong || S::STRONG) {
                        assert!(
                            *boots <= *budget,
                            "slot {s} booted {boots} times with a budget of {budget}: {store:?}"
                        );
                    }
                }
                let mark = content_good[s.index()] && (!strong || !skip_mark);
                if mark {
                    store.mark_good(s).unwrap();
                    good[s.index()] = true;
                    armed[s.index()] = None;
                }
            }
            Op::Update { good: g, tries } => {
                // Only a running, healthy system updates the other slot.
                if !content_good[booted.index()] {
                    continue;
                }
                let Some(target) = Slot::all(n).find(|&s| s != booted) else {
                    continue;
                };
                store.mark_bad(target).unwrap();
                any_mark_bad = true;
                good[target.index()] = false;
                content_good[target.index()] = g;
                if store.set_active(target, tries).is_err() {
                    // RAUC's GRUB script only gives one try; arm it that way.
                    store.set_active(target, None).unwrap();
                    armed[target.index()] = (!g).then_some((store.budget(None), 0));
                } else {
                    armed[target.index()] = (!g).then_some((store.budget(tries), 0));
                }
            }
            Op::Reactivate { slot, tries } => {
                let Some(s) = Slot::new(slot % n) else {
                    continue;
                };
                let used = if store.set_active(s, tries).is_ok() {
                    tries
                } else {
                    store.set_active(s, None).unwrap();
                    None
                };
                // Re-activation gives broken content another round of tries.
                if !content_good[s.index()] && !good[s.index()] {
                    armed[s.index()] = Some((store.budget(used), 0));
                }
            }
            Op::MarkBad { slot } => {
                // An agent runs only on a healthy system, and never marks itself bad.
                if !content_good[booted.index()] {
                    continue;
                }
                let Some(s) = Slot::new(slot % n).filter(|&s| s != booted) else {
                    continue;
                };
                store.mark_bad(s).unwrap();
                any_mark_bad = true;
                good[s.index()] = false;
                armed[s.index()] = None;
            }
        }
        for s in Slot::all(n) {
            if good[s.index()] {
                assert!(
                    store.is_bootable(s).unwrap(),
                    "good slot {s} not bootable: {store:?}"
                );
            }
        }
        if !any_mark_bad {
            assert!(
                Slot::all(n).any(|s| store.is_bootable(s).unwrap()),
                "nothing bootable: {store:?}"
            );
        }
        let again = store.reencode();
        assert_eq!(again.status(), store.status(), "encoding changed the state");
        store = again;
    }
}

fn gpt(policy: PriorityPolicy, n: usize) -> PrioritySlots {
    let mut slots = vec![SlotState::default(); n];
    slots[0] = SlotState {
        priority: 1,
        tries: 0,
        successful: true,
    };
    PrioritySlots::new(slots, policy).unwrap()
}

fn android(n: u8) -> BootloaderControl {
    let mut c = BootloaderControl::new(n, Slot::A).unwrap();
    for s in Slot::all(usize::from(n)).skip(1) {
        c.mark_bad(s).unwrap();
    }
    c
}

fn systemd(n: usize) -> SystemdBoot {
    let mut entries = vec![EntryName::parse("os-a.conf").unwrap()];
    for s in Slot::all(n).skip(1) {
        entries.push(
            EntryName::parse(&format!("os-{}+0-0.conf", s.letter().to_ascii_lowercase())).unwrap(),
        );
    }
    SystemdBoot::new(entries, Slot::all(n).collect()).unwrap()
}

fn all_stores(ops: &[Op], strong: bool, n: usize) {
    run(Gpt(gpt(PriorityPolicy::ChromeOs, n)), ops, strong);
    run(Gpt(gpt(PriorityPolicy::Flatcar, n)), ops, strong);
    run(android(n as u8), ops, strong);
    run(RaucGrub::init(n, Slot::A).unwrap(), ops, strong);
    run(RaucUboot::init(n, Slot::A).unwrap(), ops, strong);
    run(systemd(n), ops, strong);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Healthy slots always mark themselves good (what RAUC requires of a system).
    #[test]
    fn every_policy_with_healthy_slots_marking_good(ops in ops(true), n in 2usize..=4) {
        all_stores(&ops, false, n);
    }

    /// Healthy slots may fail to mark themselves good (a power cut first): the loaders
    /// that keep a successful flag still abandon an armed slot within its tries.
    #[test]
    fn every_policy_with_missed_mark_good(ops in ops(true), n in 2usize..=4) {
        all_stores(&ops, true, n);
    }

    /// Without any mark-bad, something always stays bootable and every boot finds a slot.
    #[test]
    fn no_mark_bad_never_bricks(ops in ops(false), n in 2usize..=4) {
        all_stores(&ops, true, n);
    }
}

/// The property test can fail: a policy that forgets to decrement tries keeps booting the
/// armed slot past its budget and is caught.
#[test]
#[should_panic(expected = "budget")]
fn the_budget_check_catches_a_broken_policy() {
    #[derive(Clone, Debug)]
    struct NeverDecrements(PrioritySlots);
    delegate_ab_control!(NeverDecrements, |p| PriorityPolicy::ChromeOs
        .choose(&p.slots));
    impl Store for NeverDecrements {
        fn reencode(&self) -> Self {
            self.clone()
        }
        fn budget(&self, t: Option<u8>) -> u32 {
            u32::from(t.unwrap_or(6))
        }
        const STRONG: bool = true;
    }
    let ops: Vec<Op> = std::iter::once(Op::Update {
        good: false,
        tries: Some(2),
    })
    .chain(std::iter::repeat_n(Op::Boot { skip_mark: false }, 5))
    .collect();
    run(
        NeverDecrements(gpt(PriorityPolicy::ChromeOs, 2)),
        &ops,
        true,
    );
}
