//! RAUC's boot-selection variables with the rules of RAUC's reference boot scripts:
//! [`RaucGrub`] over a GRUB environment (`ORDER`, `A_OK`, `A_TRY`, ...) and [`RaucUboot`]
//! over a U-Boot environment (`BOOT_ORDER`, `BOOT_A_LEFT`, ...).
//!
//! Both keep every other variable of their environment untouched, and every agent
//! operation changes all the variables it concerns in one write of the environment
//! (RAUC's own U-Boot backend makes two writes for set-primary).
//!
//! The rules themselves live in two small allocation-free values (`GrubRules`,
//! `UbootRules`), shared with the firmware entry points of [`crate::fixed`], so a boot
//! loader calling Keel from C applies exactly the rules the Rust model does.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};

use crate::error::{Error, Result};
use crate::grubenv::GrubEnv;
use crate::model::{check_slot, AbControl, Slot, SlotState, MAX_SLOTS};
use crate::ubootenv::UbootEnv;

fn parse_order(name: &str, text: &str, count: usize) -> Result<Order> {
    let mut order = Order::new();
    for word in text.split_whitespace() {
        let slot = (word.len() == 1)
            .then(|| word.chars().next().and_then(Slot::from_letter))
            .flatten()
            .filter(|s| s.index() < count && word.chars().all(|c| c.is_ascii_uppercase()))
            .ok_or_else(|| Error::BadVariable {
                name: name.to_string(),
                reason: format!(
                    "{word:?} is not a slot name (A to {})",
                    Slot::all(count).last().map_or('A', |s| s.letter())
                ),
            })?;
        if order.contains(slot) {
            return Err(Error::BadVariable {
                name: name.to_string(),
                reason: format!("slot {slot} appears twice in {text:?}"),
            });
        }
        order.push(slot);
    }
    Ok(order)
}

fn order_text(order: &[Slot]) -> String {
    let mut s = String::new();
    for (i, slot) in order.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push(slot.letter());
    }
    s
}

fn check_count(count: usize) -> Result<()> {
    if !(1..=MAX_SLOTS).contains(&count) {
        return Err(Error::SlotCount {
            count,
            max: MAX_SLOTS,
        });
    }
    Ok(())
}

fn flag(name: &str, value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(Error::BadVariable {
            name: name.to_string(),
            reason: format!("expected 0 or 1, found {v:?}"),
        }),
    }
}

/// Priority in the common view from a position in the boot order.
fn order_priority(order: &[Slot], slot: Slot) -> u8 {
    order
        .iter()
        .position(|&s| s == slot)
        .map_or(0, |i| (MAX_SLOTS - i) as u8)
}

/// A boot order without allocation: at most [`MAX_SLOTS`] distinct slots, first preferred.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Order {
    slots: [Slot; MAX_SLOTS],
    len: usize,
}

impl PartialEq for Order {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Order {}

impl Order {
    pub(crate) const fn new() -> Self {
        Order {
            slots: [Slot::A; MAX_SLOTS],
            len: 0,
        }
    }

    /// The first `min(count, 2)` slots: the scripts' default order ("A B").
    pub(crate) fn default_for(count: usize) -> Self {
        let mut o = Order::new();
        for s in Slot::all(count.min(2)) {
            o.push(s);
        }
        o
    }

    pub(crate) fn as_slice(&self) -> &[Slot] {
        // `get` rather than indexing: `len` never exceeds the array, and the firmware
        // build must contain no bounds-check panic.
        self.slots.get(..self.len).unwrap_or(&[])
    }

    pub(crate) fn contains(&self, slot: Slot) -> bool {
        self.as_slice().contains(&slot)
    }

    /// Append `slot` unless it is there already (or the order is full, which distinct
    /// slots cannot make it).
    pub(crate) fn push(&mut self, slot: Slot) {
        if self.contains(slot) {
            return;
        }
        if let Some(s) = self.slots.get_mut(self.len) {
            *s = slot;
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, slot: Slot) {
        let mut kept = Order::new();
        for &s in self.as_slice() {
            if s != slot {
                kept.push(s);
            }
        }
        *self = kept;
    }

    pub(crate) fn put_first(&mut self, slot: Slot) {
        let mut next = Order::new();
        next.push(slot);
        for &s in self.as_slice() {
            next.push(s);
        }
        *self = next;
    }
}

/// RAUC's GRUB script over its variables, without the environment: what both
/// [`RaucGrub`] and the allocation-free path of [`crate::fixed`] run. Slots are checked
/// against `count` by the callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GrubRules {
    pub(crate) count: usize,
    pub(crate) order: Order,
    pub(crate) ok: [bool; MAX_SLOTS],
    pub(crate) tried: [bool; MAX_SLOTS],
}

fn get(a: &[bool; MAX_SLOTS], slot: Slot) -> bool {
    a.get(slot.index()).copied().unwrap_or(false)
}

fn put<T>(a: &mut [T; MAX_SLOTS], slot: Slot, value: T) {
    if let Some(x) = a.get_mut(slot.index()) {
        *x = value;
    }
}

impl GrubRules {
    pub(crate) fn state(&self, slot: Slot) -> SlotState {
        let ok = get(&self.ok, slot);
        SlotState {
            priority: order_priority(self.order.as_slice(), slot),
            tries: u8::from(ok && !get(&self.tried, slot)),
            successful: ok,
        }
    }

    pub(crate) fn is_bootable(&self, slot: Slot) -> bool {
        get(&self.ok, slot) && self.order.contains(slot)
    }

    /// The script: the first slot of ORDER that was OK and not tried boots, and every
    /// slot looked at is marked tried; with none, every OK slot's TRY is reset and menu
    /// entry 0 (slot A) boots. The flag says whether the reset happened.
    pub(crate) fn boot(&mut self) -> (Slot, bool) {
        let order = self.order;
        for &s in order.as_slice() {
            let was_tried = get(&self.tried, s);
            put(&mut self.tried, s, true);
            if get(&self.ok, s) && !was_tried {
                return (s, false);
            }
        }
        for (ok, tried) in self.ok.iter().zip(self.tried.iter_mut()).take(self.count) {
            if *ok && *tried {
                *tried = false;
            }
        }
        (Slot::A, true)
    }

    pub(crate) fn activate(&mut self, slot: Slot) {
        self.order.put_first(slot);
        self.good(slot);
    }

    /// RAUC `mark-good`: OK=1, TRY=0.
    pub(crate) fn good(&mut self, slot: Slot) {
        put(&mut self.ok, slot, true);
        put(&mut self.tried, slot, false);
    }

    /// RAUC `mark-bad`: OK=0, TRY=0.
    pub(crate) fn bad(&mut self, slot: Slot) {
        put(&mut self.ok, slot, false);
        put(&mut self.tried, slot, false);
    }
}

/// RAUC with GRUB: `ORDER="A B"`, `A_OK`, `A_TRY`, `B_OK`, `B_TRY` (0 or 1).
///
/// The boot script (RAUC's integration documentation): for each slot in `ORDER`, set its
/// TRY to 1 and boot the first whose OK was 1 and TRY was 0; if there is none, reset TRY to
/// 0 for every OK slot and boot menu entry 0 (slot A). An armed slot therefore gets one try,
/// and a good slot must be marked good again after every boot. Unset variables take the
/// script's defaults (`ORDER="A B"`, 0).
///
/// Common view: priority from the position in ORDER (0 if absent), tries 1 when OK and not
/// TRY, successful = OK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaucGrub {
    env: GrubEnv,
    rules: GrubRules,
}

impl RaucGrub {
    /// Read RAUC's variables for `count` slots from `env`, strictly.
    pub fn from_env(env: GrubEnv, count: usize) -> Result<Self> {
        check_count(count)?;
        let order = match env.get("ORDER") {
            Some(o) => parse_order("ORDER", o, count)?,
            None => Order::default_for(count),
        };
        let mut ok = [false; MAX_SLOTS];
        let mut tried = [false; MAX_SLOTS];
        for s in Slot::all(count) {
            let (okn, tryn) = (format!("{s}_OK"), format!("{s}_TRY"));
            ok[s.index()] = flag(&okn, env.get(&okn))?;
            tried[s.index()] = flag(&tryn, env.get(&tryn))?;
        }
        Ok(RaucGrub {
            env,
            rules: GrubRules {
                count,
                order,
                ok,
                tried,
            },
        })
    }

    /// A fresh environment: `ORDER` of all slots, `good` OK, the others not.
    pub fn init(count: usize, good: Slot) -> Result<Self> {
        check_count(count)?;
        check_slot(good, count)?;
        let mut order = Order::new();
        order.push(good);
        for s in Slot::all(count) {
            order.push(s);
        }
        let mut ok = [false; MAX_SLOTS];
        ok[good.index()] = true;
        Ok(RaucGrub {
            env: GrubEnv::new(),
            rules: GrubRules {
                count,
                order,
                ok,
                tried: [false; MAX_SLOTS],
            },
        })
    }

    /// Set a variable of the environment besides RAUC's (a kernel argument for a slot's
    /// menu entry); it is written with the next block. RAUC's own names are refused.
    pub fn set_var(&mut self, name: &str, value: &str) -> Result<()> {
        if name == "ORDER" || rauc_slot_var(name, "", &["_OK", "_TRY"]) {
            return Err(Error::ReservedVariable(name.into()));
        }
        self.env.set(name, value)
    }

    /// A variable of the environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name)
    }

    /// The environment with RAUC's variables written, every one in the same block.
    pub fn to_env(&self) -> Result<GrubEnv> {
        let mut env = self.env.clone();
        let r = &self.rules;
        let mut vars: Vec<(String, String)> =
            vec![("ORDER".to_string(), order_text(r.order.as_slice()))];
        for s in Slot::all(r.count) {
            vars.push((format!("{s}_OK"), u8::from(get(&r.ok, s)).to_string()));
            vars.push((format!("{s}_TRY"), u8::from(get(&r.tried, s)).to_string()));
        }
        env.set_all(vars.iter().map(|(n, v)| (n.as_str(), v.as_str())))?;
        Ok(env)
    }

    /// The boot order.
    pub fn order(&self) -> &[Slot] {
        self.rules.order.as_slice()
    }
}

/// What both RAUC layouts answer from their rules alone: the count, a slot's state, and
/// RAUC's `mark-good` and `mark-bad` (each layout's rules say what those set).
macro_rules! from_rules {
    () => {
        fn slot_count(&self) -> usize {
            self.rules.count
        }

        fn state(&self, slot: Slot) -> Result<SlotState> {
            check_slot(slot, self.rules.count)?;
            Ok(self.rules.state(slot))
        }

        fn mark_good(&mut self, slot: Slot) -> Result<()> {
            check_slot(slot, self.rules.count)?;
            self.rules.good(slot);
            Ok(())
        }

        fn mark_bad(&mut self, slot: Slot) -> Result<()> {
            check_slot(slot, self.rules.count)?;
            self.rules.bad(slot);
            Ok(())
        }
    };
}

impl AbControl for RaucGrub {
    from_rules!();

    /// OK and in ORDER: the script's reset brings a tried OK slot back.
    fn is_bootable(&self, slot: Slot) -> Result<bool> {
        check_slot(slot, self.rules.count)?;
        Ok(self.rules.is_bootable(slot))
    }

    fn boot(&mut self) -> Option<Slot> {
        Some(self.rules.boot().0)
    }

    /// RAUC `set-primary`: first in ORDER, OK=1, TRY=0. GRUB gives one try; `tries` must
    /// be unset or 1.
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        check_slot(slot, self.rules.count)?;
        if tries.is_some_and(|t| t != 1) {
            return Err(Error::OneTry(tries.unwrap_or(0)));
        }
        self.rules.activate(slot);
        Ok(())
    }
}

/// RAUC's default boot attempts for U-Boot.
pub const UBOOT_DEFAULT_ATTEMPTS: u32 = 3;

/// RAUC's U-Boot script over its variables, without the environment: what both
/// [`RaucUboot`] and the allocation-free path of [`crate::fixed`] run. Slots are checked
/// against `count` by the callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UbootRules {
    pub(crate) count: usize,
    pub(crate) order: Order,
    pub(crate) left: [u32; MAX_SLOTS],
}

impl UbootRules {
    pub(crate) fn left(&self, slot: Slot) -> u32 {
        self.left.get(slot.index()).copied().unwrap_or(0)
    }

    pub(crate) fn state(&self, slot: Slot) -> SlotState {
        SlotState {
            priority: order_priority(self.order.as_slice(), slot),
            tries: self.left(slot).min(255) as u8,
            successful: false,
        }
    }

    fn select(&mut self) -> Option<Slot> {
        let slot = *self.order.as_slice().iter().find(|&&s| self.left(s) > 0)?;
        let left = self.left(slot).saturating_sub(1);
        put(&mut self.left, slot, left);
        Some(slot)
    }

    /// The script: the first slot of BOOT_ORDER with attempts left loses one and boots;
    /// with none, every counter is refilled (the script's reset) and the choice is made
    /// again. The flag says whether the refill happened.
    pub(crate) fn boot(&mut self) -> (Option<Slot>, bool) {
        if let Some(s) = self.select() {
            return (Some(s), false);
        }
        // "No valid RAUC slot found. Resetting tries to 3", saveenv, reset.
        for l in self.left.iter_mut().take(self.count) {
            *l = UBOOT_DEFAULT_ATTEMPTS;
        }
        (self.select(), true)
    }

    pub(crate) fn activate(&mut self, slot: Slot, tries: u32) {
        self.order.put_first(slot);
        put(&mut self.left, slot, tries);
    }

    /// RAUC `mark-good`: attempts back to 3; the slot joins BOOT_ORDER if it had left it.
    pub(crate) fn good(&mut self, slot: Slot) {
        put(&mut self.left, slot, UBOOT_DEFAULT_ATTEMPTS);
        self.order.push(slot);
    }

    /// RAUC `mark-bad`: out of BOOT_ORDER, no attempts.
    pub(crate) fn bad(&mut self, slot: Slot) {
        self.order.remove(slot);
        put(&mut self.left, slot, 0);
    }
}

/// RAUC with U-Boot: `BOOT_ORDER="A B"`, `BOOT_A_LEFT`, `BOOT_B_LEFT` (hexadecimal, as
/// `setexpr` writes them).
///
/// The boot script (RAUC's reference `boot.cmd`): the first slot in `BOOT_ORDER` with LEFT
/// above 0 loses one and boots; if there is none, every LEFT is reset to 3 and the board
/// resets (folded into the same call of [`AbControl::boot`] here). Unset variables take the
/// script's defaults (`BOOT_ORDER="A B"`, 3).
///
/// Common view: priority from the position in BOOT_ORDER (0 if absent), tries = LEFT
/// (at most 255), successful never (U-Boot keeps no such state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaucUboot {
    env: UbootEnv,
    rules: UbootRules,
}

/// `PREFIX` + a slot letter + one of `suffixes`: a per-slot variable of RAUC's scripts.
fn rauc_slot_var(name: &str, prefix: &str, suffixes: &[&str]) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let mut chars = rest.chars();
    chars.next().is_some_and(|c| Slot::from_letter(c).is_some())
        && suffixes.contains(&chars.as_str())
}

fn parse_left(name: &str, v: &str) -> Result<u32> {
    let digits = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    if digits.is_empty() || digits.len() > 8 {
        return Err(Error::BadVariable {
            name: name.to_string(),
            reason: format!("expected a hexadecimal count, found {v:?}"),
        });
    }
    u32::from_str_radix(digits, 16).map_err(|_| Error::BadVariable {
        name: name.to_string(),
        reason: format!("expected a hexadecimal count, found {v:?}"),
    })
}

impl RaucUboot {
    /// Read RAUC's variables for `count` slots from `env`, strictly.
    pub fn from_env(env: UbootEnv, count: usize) -> Result<Self> {
        check_count(count)?;
        let order = match env.get("BOOT_ORDER") {
            Some(o) => parse_order("BOOT_ORDER", o, count)?,
            None => Order::default_for(count),
        };
        let mut left = [UBOOT_DEFAULT_ATTEMPTS; MAX_SLOTS];
        for s in Slot::all(count) {
            let n = format!("BOOT_{s}_LEFT");
            if let Some(v) = env.get(&n) {
                left[s.index()] = parse_left(&n, v)?;
            }
        }
        Ok(RaucUboot {
            env,
            rules: UbootRules { count, order, left },
        })
    }

    /// A fresh environment: `good` first in BOOT_ORDER with 3 attempts, the others out of
    /// the order with none.
    pub fn init(count: usize, good: Slot) -> Result<Self> {
        check_count(count)?;
        check_slot(good, count)?;
        let mut left = [0; MAX_SLOTS];
        left[good.index()] = UBOOT_DEFAULT_ATTEMPTS;
        let mut order = Order::new();
        order.push(good);
        Ok(RaucUboot {
            env: UbootEnv::new(),
            rules: UbootRules { count, order, left },
        })
    }

    /// Set a variable of the environment besides RAUC's (a kernel argument for a slot);
    /// it is written with the next environment. RAUC's own names are refused.
    pub fn set_var(&mut self, name: &str, value: &str) -> Result<()> {
        if name == "BOOT_ORDER" || rauc_slot_var(name, "BOOT_", &["_LEFT"]) {
            return Err(Error::ReservedVariable(name.into()));
        }
        self.env.set(name, value)
    }

    /// A variable of the environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name)
    }

    /// The environment with RAUC's variables written.
    pub fn to_env(&self) -> Result<UbootEnv> {
        let mut env = self.env.clone();
        env.set("BOOT_ORDER", &order_text(self.rules.order.as_slice()))?;
        for s in Slot::all(self.rules.count) {
            env.set(
                &format!("BOOT_{s}_LEFT"),
                &format!("{:x}", self.rules.left(s)),
            )?;
        }
        Ok(env)
    }

    /// The boot order.
    pub fn order(&self) -> &[Slot] {
        self.rules.order.as_slice()
    }

    /// Boot attempts left for `slot`.
    pub fn left(&self, slot: Slot) -> u32 {
        self.rules.left(slot)
    }
}

impl AbControl for RaucUboot {
    from_rules!();

    /// In BOOT_ORDER: the script's reset refills an exhausted slot.
    fn is_bootable(&self, slot: Slot) -> Result<bool> {
        check_slot(slot, self.rules.count)?;
        Ok(self.rules.order.contains(slot))
    }

    fn boot(&mut self) -> Option<Slot> {
        self.rules.boot().0
    }

    /// RAUC `set-primary` in one write: first in BOOT_ORDER with `tries` attempts
    /// (default 3).
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        check_slot(slot, self.rules.count)?;
        let tries = crate::model::arming_tries(tries, UBOOT_DEFAULT_ATTEMPTS)?;
        self.rules.activate(slot, tries);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_variables_are_kept_and_raucs_own_names_refused() {
        let mut g = RaucGrub::init(2, Slot::A).unwrap();
        g.set_var("KEEL_B_ARGS", "roothash=ab").unwrap();
        for name in ["ORDER", "A_OK", "B_TRY"] {
            assert!(g.set_var(name, "x").is_err(), "{name}");
        }
        assert!(g.set_var("AB_OK", "x").is_ok(), "not a slot's variable");
        assert_eq!(g.to_env().unwrap().get("KEEL_B_ARGS"), Some("roothash=ab"));
        let mut u = RaucUboot::init(2, Slot::A).unwrap();
        u.set_var("KEEL_B_ARGS", "roothash=ab").unwrap();
        for name in ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT"] {
            assert!(u.set_var(name, "x").is_err(), "{name}");
        }
        assert_eq!(u.to_env().unwrap().get("KEEL_B_ARGS"), Some("roothash=ab"));
    }

    #[test]
    fn grub_script_rules() {
        let mut g = RaucGrub::init(2, Slot::A).unwrap();
        g.mark_bad(Slot::B).unwrap();
        g.set_active(Slot::B, None).unwrap();
        assert_eq!(g.order(), &[Slot::B, Slot::A]);
        assert_eq!(g.boot(), Some(Slot::B));
        // B did not mark itself good: skipped, A boots.
        assert_eq!(g.boot(), Some(Slot::A));
        g.mark_good(Slot::A).unwrap();
        assert_eq!(g.boot(), Some(Slot::A));
        // A not marked good this time: both tried, reset, entry 0 (A) boots, and B,
        // being OK, is reset too and gets another try: RAUC's rule.
        assert_eq!(g.boot(), Some(Slot::A));
        assert_eq!(g.boot(), Some(Slot::B));
        assert!(g.set_active(Slot::B, Some(3)).is_err());
        let env = g.to_env().unwrap();
        assert_eq!(env.get("ORDER"), Some("B A"));
        let back = RaucGrub::from_env(env.clone(), 2).unwrap();
        assert_eq!(back.status(), g.status());
        assert_eq!(back.to_env().unwrap(), env);
    }

    #[test]
    fn grub_variables_are_checked() {
        let mut env = GrubEnv::new();
        env.set("A_OK", "yes").unwrap();
        assert!(
            matches!(RaucGrub::from_env(env, 2), Err(Error::BadVariable { name, .. }) if name == "A_OK")
        );
        for order in ["A A", "A C", "a B", "AB"] {
            let mut env = GrubEnv::new();
            env.set("ORDER", order).unwrap();
            assert!(
                matches!(RaucGrub::from_env(env, 2), Err(Error::BadVariable { .. })),
                "{order}"
            );
        }
        // Unset variables: the script's defaults; other variables are kept.
        let mut env = GrubEnv::new();
        env.set("saved_entry", "x").unwrap();
        let g = RaucGrub::from_env(env, 2).unwrap();
        assert_eq!(g.order(), &[Slot::A, Slot::B]);
        assert_eq!(g.to_env().unwrap().get("saved_entry"), Some("x"));
    }

    #[test]
    fn uboot_script_rules() {
        let mut u = RaucUboot::init(2, Slot::A).unwrap();
        u.set_active(Slot::B, None).unwrap();
        for left in [2, 1, 0] {
            assert_eq!(u.boot(), Some(Slot::B));
            assert_eq!(u.left(Slot::B), left);
        }
        assert_eq!(u.boot(), Some(Slot::A));
        u.mark_bad(Slot::B).unwrap();
        assert_eq!(u.order(), &[Slot::A]);
        // A exhausted without mark-good: the script resets every counter.
        assert_eq!(u.boot(), Some(Slot::A));
        assert_eq!(u.boot(), Some(Slot::A));
        assert_eq!(u.boot(), Some(Slot::A));
        assert_eq!(u.left(Slot::A), 2);
        let env = u.to_env().unwrap();
        assert_eq!(env.get("BOOT_ORDER"), Some("A"));
        // The reset refilled B too, but B stays out of the order.
        assert_eq!(env.get("BOOT_B_LEFT"), Some("3"));
        assert!(!u.is_bootable(Slot::B).unwrap());
        let back = RaucUboot::from_env(env.clone(), 2).unwrap();
        assert_eq!(back.status(), u.status());
        assert_eq!(back.to_env().unwrap(), env);
    }

    #[test]
    fn uboot_counts_are_hex() {
        let mut env = UbootEnv::new();
        env.set("BOOT_A_LEFT", "a").unwrap();
        env.set("BOOT_B_LEFT", "0x10").unwrap();
        let mut u = RaucUboot::from_env(env, 2).unwrap();
        assert_eq!((u.left(Slot::A), u.left(Slot::B)), (10, 16));
        u.set_active(Slot::A, Some(12)).unwrap();
        assert_eq!(u.to_env().unwrap().get("BOOT_A_LEFT"), Some("c"));
        let mut env = UbootEnv::new();
        env.set("BOOT_A_LEFT", "three").unwrap();
        assert!(matches!(
            RaucUboot::from_env(env, 2),
            Err(Error::BadVariable { .. })
        ));
    }
}
