//! Allocation-free entry points for firmware: a boot loader reads the A/B state from the
//! bytes of its store, runs one boot by its rules, and writes the bytes back, with no
//! heap, no panic and every buffer provided by the caller.
//!
//! The rest of the crate is `no_std` but allocates (variables are `String`s, errors carry
//! formatted messages). A boot loader has no allocator before its heap is set up, and
//! U-Boot's maintainers would not take code that can panic. This module is the subset a
//! boot loader needs, with the same rules as the model (it runs the very same rule code:
//! [`BootloaderControl`]'s, and RAUC's scripts') and
//! the same acceptance of bytes as the parsers (checked against them by the tests):
//!
//! | store | read | write | rules ([`Policy`]) |
//! |---|---|---|---|
//! | Android misc `bootloader_control` (32 bytes at misc + 2048) | [`AbState::read_android`] | [`AbState::write_android`] | U-Boot `android_ab`, AOSP HAL |
//! | U-Boot environment, single or redundant | [`AbState::read_uboot`] | [`AbState::write_uboot`] | RAUC `boot.cmd` |
//! | U-Boot's imported environment (`env_get` / `env_set`) | [`AbState::from_uboot_vars`] | [`AbState::uboot_var`] | RAUC `boot.cmd` |
//! | GRUB environment block (1024 bytes) | [`AbState::read_grubenv`] | [`AbState::write_grubenv`] | RAUC's GRUB script |
//!
//! [`AbState`] is a small plain value (60 bytes, no pointers, any byte pattern is safe:
//! every call checks it), so C code can keep one on its stack. Errors are
//! [`FixedError`]: a number and a static message.
//!
//! ```
//! use keel_bootflags::fixed::{AbState, Policy};
//! use keel_bootflags::Slot;
//!
//! // A fresh misc block, as a boot loader makes when the stored one is damaged.
//! let mut st = AbState::init_android(2, Slot::A)?;
//! st.set_active(Slot::B, None)?;
//! let boot = st.boot()?;
//! assert_eq!((boot.slot, boot.tries_spent, boot.fallback), (Some(Slot::B), 1, false));
//! let mut block = [0u8; 32];
//! st.write_android(&mut block)?;
//! assert_eq!(AbState::read_android(&block)?.policy(), Some(Policy::AndroidAb));
//! # Ok::<(), keel_bootflags::fixed::FixedError>(())
//! ```

use core::fmt;

use crate::android::{self, BootloaderControl};
use crate::grubenv::{BLOCK_SIZE, SIGNATURE};
use crate::model::{AbControl, Slot, SlotState, MAX_SLOTS};
use crate::rauc::{GrubRules, Order, UbootRules, UBOOT_DEFAULT_ATTEMPTS};
use crate::ubootenv::{newer_copy, MAX_ENV_SIZE};

/// Why an allocation-free call failed: a stable number ([`code`](Self::code)) and a
/// static message ([`message`](Self::message)). Where the state was being read, nothing
/// was read; where it was being changed or written, it is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FixedError {
    /// A buffer's length is not what the format or the other buffer requires.
    Size,
    /// The Android block's magic is not 0x42414342.
    Magic,
    /// The Android block's version is not 1.
    Version,
    /// A stored CRC-32 does not match the bytes.
    Crc,
    /// A slot count outside 1 to 4 (the stored one or the one asked for).
    SlotCount,
    /// A U-Boot or GRUB environment is malformed (no terminator, an entry without
    /// `=`, an empty name, text that is not UTF-8, a missing GRUB signature, bad padding).
    Syntax,
    /// A boot-state variable holds a value its boot script would not understand.
    Variable,
    /// The changed environment does not fit its size.
    Overflow,
    /// A slot the store does not have.
    NoSuchSlot,
    /// A tries count the rules do not allow.
    Tries,
    /// The environment copy given to write from is not the one the state was read from.
    Stale,
    /// The state value was not made by a read or init call (or was damaged since).
    State,
    /// The operation does not apply to this store's policy.
    Policy,
}

impl FixedError {
    /// Every error, in code order.
    pub const ALL: [FixedError; 13] = [
        FixedError::Size,
        FixedError::Magic,
        FixedError::Version,
        FixedError::Crc,
        FixedError::SlotCount,
        FixedError::Syntax,
        FixedError::Variable,
        FixedError::Overflow,
        FixedError::NoSuchSlot,
        FixedError::Tries,
        FixedError::Stale,
        FixedError::State,
        FixedError::Policy,
    ];

    /// A stable number, 1 and up (the C interface returns its negation).
    pub fn code(self) -> i32 {
        match self {
            FixedError::Size => 1,
            FixedError::Magic => 2,
            FixedError::Version => 3,
            FixedError::Crc => 4,
            FixedError::SlotCount => 5,
            FixedError::Syntax => 6,
            FixedError::Variable => 7,
            FixedError::Overflow => 8,
            FixedError::NoSuchSlot => 9,
            FixedError::Tries => 10,
            FixedError::Stale => 11,
            FixedError::State => 12,
            FixedError::Policy => 13,
        }
    }

    /// The error with this [`code`](Self::code).
    pub fn from_code(code: i32) -> Option<FixedError> {
        FixedError::ALL.iter().copied().find(|e| e.code() == code)
    }

    /// What went wrong, for a person.
    pub fn message(self) -> &'static str {
        match self {
            FixedError::Size => "buffer size does not match the format",
            FixedError::Magic => "android bootloader_control: bad magic (expected 0x42414342)",
            FixedError::Version => "android bootloader_control: unsupported version (expected 1)",
            FixedError::Crc => "CRC-32 mismatch",
            FixedError::SlotCount => "slot count out of range (1 to 4)",
            FixedError::Syntax => "malformed environment",
            FixedError::Variable => {
                "boot-state variable holds a value the boot script does not understand"
            }
            FixedError::Overflow => "environment does not fit its size",
            FixedError::NoSuchSlot => "no such slot in this store",
            FixedError::Tries => "tries count not allowed by the rules",
            FixedError::Stale => "environment copy is not the one the state was read from",
            FixedError::State => "state was not initialised by a read or init call",
            FixedError::Policy => "operation does not apply to this store's policy",
        }
    }
}

impl fmt::Display for FixedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl core::error::Error for FixedError {}

type Result<T> = core::result::Result<T, FixedError>;

/// Which boot loader's rules a state follows (fixed by the store it was read from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// Android misc `bootloader_control`: U-Boot `android_ab` selection, AOSP HAL
    /// operations.
    AndroidAb,
    /// RAUC's U-Boot `boot.cmd` over `BOOT_ORDER` / `BOOT_<slot>_LEFT`.
    RaucUboot,
    /// RAUC's GRUB script over `ORDER` / `<slot>_OK` / `<slot>_TRY`.
    RaucGrub,
}

impl Policy {
    /// A stable number, 1 and up.
    pub fn code(self) -> u8 {
        match self {
            Policy::AndroidAb => 1,
            Policy::RaucUboot => 2,
            Policy::RaucGrub => 3,
        }
    }

    /// The policy with this [`code`](Self::code).
    pub fn from_code(code: u8) -> Option<Policy> {
        match code {
            1 => Some(Policy::AndroidAb),
            2 => Some(Policy::RaucUboot),
            3 => Some(Policy::RaucGrub),
            _ => None,
        }
    }

    /// Its name: `android-ab`, `rauc-uboot`, `rauc-grub`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::AndroidAb => "android-ab",
            Policy::RaucUboot => "rauc-uboot",
            Policy::RaucGrub => "rauc-grub",
        }
    }

    /// The policy with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Policy> {
        [Policy::AndroidAb, Policy::RaucUboot, Policy::RaucGrub]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// What one boot did: the slot to start and what the boot loader counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Boot {
    /// The slot to start; `None` if nothing is bootable (Android with every slot spent).
    pub slot: Option<Slot>,
    /// Tries the boot loader took from that slot for this boot (0 for a slot marked
    /// good; RAUC's GRUB script after its reset gives A a free boot).
    pub tries_spent: u8,
    /// Tries the slot has left after this boot (RAUC U-Boot: `BOOT_<slot>_LEFT`).
    pub tries_left: u32,
    /// The slot is not the preferred one (highest priority, first in the boot order):
    /// the preferred slot was out of tries or bad, and the boot loader fell back.
    pub fallback: bool,
    /// Nothing had tries left, and the boot script refilled the counters before
    /// choosing (RAUC's scripts do).
    pub reset: bool,
}

/// The A/B state of one store, allocation-free and of fixed size: what a boot loader
/// keeps between reading its store and writing it back.
///
/// Made by a `read_*` or `init_*` call. All fields are integers, so any bytes make a
/// value that is safe to pass in; each call checks it and fails with
/// [`FixedError::State`] if it does not hold a state (the zero value does not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct AbState {
    policy: u8,
    count: u8,
    order_len: u8,
    redundant: u8,
    copy: u8,
    flags: u8,
    ok: u8,
    tried: u8,
    order: [u8; MAX_SLOTS],
    misc: [u8; android::SIZE],
    left: [u32; MAX_SLOTS],
}

enum Rules {
    Android(BootloaderControl),
    Uboot(UbootRules),
    Grub(GrubRules),
}

fn slot_in(slot: Slot, count: usize) -> Result<()> {
    if slot.index() < count {
        Ok(())
    } else {
        Err(FixedError::NoSuchSlot)
    }
}

fn check_count(count: usize) -> Result<()> {
    if (1..=MAX_SLOTS).contains(&count) {
        Ok(())
    } else {
        Err(FixedError::SlotCount)
    }
}

impl AbState {
    fn rules(&self) -> Result<Rules> {
        let count = usize::from(self.count);
        check_count(count).map_err(|_| FixedError::State)?;
        let policy = Policy::from_code(self.policy).ok_or(FixedError::State)?;
        if policy == Policy::AndroidAb {
            let c = BootloaderControl::from_checked(self.misc);
            if usize::from(c.nb_slot()) != count {
                return Err(FixedError::State);
            }
            return Ok(Rules::Android(c));
        }
        let mut order = Order::new();
        let used = self
            .order
            .get(..usize::from(self.order_len))
            .ok_or(FixedError::State)?;
        for &i in used {
            let slot = Slot::new(usize::from(i))
                .filter(|s| s.index() < count && !order.contains(*s))
                .ok_or(FixedError::State)?;
            order.push(slot);
        }
        let bits = |b: u8| core::array::from_fn(|i| b & (1 << i) != 0);
        Ok(match policy {
            Policy::RaucUboot => Rules::Uboot(UbootRules {
                count,
                order,
                left: self.left,
            }),
            _ => Rules::Grub(GrubRules {
                count,
                order,
                ok: bits(self.ok),
                tried: bits(self.tried),
            }),
        })
    }

    fn store_order(&mut self, order: &Order) {
        let slots = order.as_slice();
        self.order = [0; MAX_SLOTS];
        for (o, s) in self.order.iter_mut().zip(slots) {
            *o = s.index() as u8;
        }
        self.order_len = slots.len() as u8;
    }

    fn store(&mut self, rules: &Rules) {
        match rules {
            Rules::Android(c) => self.misc = c.raw(),
            Rules::Uboot(u) => {
                self.store_order(&u.order);
                self.left = u.left;
            }
            Rules::Grub(g) => {
                self.store_order(&g.order);
                let bits = |a: &[bool; MAX_SLOTS]| {
                    a.iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &x)| b | (u8::from(x) << i))
                };
                self.ok = bits(&g.ok);
                self.tried = bits(&g.tried);
            }
        }
    }

    fn fresh(policy: Policy, count: usize) -> AbState {
        AbState {
            policy: policy.code(),
            count: count as u8,
            ..AbState::default()
        }
    }

    /// The rules this state follows; `None` for a value not made by a read or init call.
    pub fn policy(&self) -> Option<Policy> {
        self.rules().ok().and(Policy::from_code(self.policy))
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        usize::from(self.count)
    }

    /// The state of `slot` in the common model (as the model's `AbControl::state`).
    pub fn state(&self, slot: Slot) -> Result<SlotState> {
        slot_in(slot, self.slot_count())?;
        Ok(match self.rules()? {
            Rules::Android(c) => c.slot_state(slot),
            Rules::Uboot(u) => u.state(slot),
            Rules::Grub(g) => g.state(slot),
        })
    }

    /// Whether the boot loader may still choose `slot` (as `AbControl::is_bootable`).
    pub fn is_bootable(&self, slot: Slot) -> Result<bool> {
        slot_in(slot, self.slot_count())?;
        Ok(match self.rules()? {
            Rules::Android(c) => c.slot_state(slot).is_bootable(),
            Rules::Uboot(u) => u.order.contains(slot),
            Rules::Grub(g) => g.is_bootable(slot),
        })
    }

    /// The slot the boot loader prefers before counting tries: the highest priority
    /// (ties to the lowest slot), which for RAUC is the first of the boot order.
    fn preferred(&self) -> Result<Option<Slot>> {
        let mut best: Option<(Slot, u8)> = None;
        for s in Slot::all(self.slot_count()) {
            let p = self.state(s)?.priority;
            if p > 0 && best.is_none_or(|(_, b)| p > b) {
                best = Some((s, p));
            }
        }
        Ok(best.map(|(s, _)| s))
    }

    /// Act as the boot loader: choose the slot to start and apply the counter change its
    /// rules make before starting it. Write the state back before starting the slot.
    pub fn boot(&mut self) -> Result<Boot> {
        let preferred = self.preferred()?;
        let mut rules = self.rules()?;
        let (slot, reset) = match &mut rules {
            Rules::Android(c) => (c.boot(), false),
            Rules::Uboot(u) => u.boot(),
            Rules::Grub(g) => {
                let (s, reset) = g.boot();
                (Some(s), reset)
            }
        };
        let before = match slot {
            Some(s) => self.state(s)?,
            None => SlotState::default(),
        };
        self.store(&rules);
        let (tries_spent, tries_left) = match (slot, &rules) {
            (None, _) => (0, 0),
            // The script always takes one attempt, after its refill if there was one.
            (Some(s), Rules::Uboot(u)) => (1, u.left(s)),
            (Some(s), _) => {
                let after = self.state(s)?.tries;
                (before.tries.saturating_sub(after), u32::from(after))
            }
        };
        Ok(Boot {
            slot,
            tries_spent,
            tries_left,
            fallback: slot.is_some() && slot != preferred,
            reset,
        })
    }

    /// The slot the next boot would start, without changing anything.
    pub fn next_boot(&self) -> Result<Option<Slot>> {
        let mut copy = *self;
        Ok(copy.boot()?.slot)
    }

    /// Arm `slot` to boot next with `tries` attempts (`None`: the rules' default), as the
    /// model's `AbControl::set_active`: Android 1 to 7 (default 6), RAUC U-Boot 1 to 255
    /// (default 3), RAUC GRUB exactly 1.
    pub fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        slot_in(slot, self.slot_count())?;
        let mut rules = self.rules()?;
        match &mut rules {
            Rules::Android(c) => {
                let tries = tries.unwrap_or(android::ACTIVE_TRIES);
                if tries == 0 || tries > android::MAX_TRIES {
                    return Err(FixedError::Tries);
                }
                c.activate(slot, tries);
            }
            Rules::Uboot(u) => {
                let tries = tries.map_or(UBOOT_DEFAULT_ATTEMPTS, u32::from);
                if tries == 0 {
                    return Err(FixedError::Tries);
                }
                u.activate(slot, tries);
            }
            Rules::Grub(g) => {
                if tries.is_some_and(|t| t != 1) {
                    return Err(FixedError::Tries);
                }
                g.activate(slot);
            }
        }
        self.store(&rules);
        Ok(())
    }

    /// The booted slot came up healthy (as the model's `AbControl::mark_good`).
    pub fn mark_good(&mut self, slot: Slot) -> Result<()> {
        slot_in(slot, self.slot_count())?;
        let mut rules = self.rules()?;
        match &mut rules {
            Rules::Android(c) => c.hal_mark_good(slot),
            Rules::Uboot(u) => u.good(slot),
            Rules::Grub(g) => g.good(slot),
        }
        self.store(&rules);
        Ok(())
    }

    /// Never boot `slot` again until it is armed anew (as `AbControl::mark_bad`).
    pub fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        slot_in(slot, self.slot_count())?;
        let mut rules = self.rules()?;
        match &mut rules {
            Rules::Android(c) => c.hal_mark_bad(slot),
            Rules::Uboot(u) => u.bad(slot),
            Rules::Grub(g) => g.bad(slot),
        }
        self.store(&rules);
        Ok(())
    }
}

/// zlib's CRC-32, four bits at a time over a 64-byte table. crc32fast (what the rest of
/// the crate uses) carries a 16 KiB table and bounds checks the optimiser keeps; a boot
/// loader checks a few KiB once per boot, so small wins here. The tests check both give
/// the same bytes.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 16] = {
        let mut t = [0u32; 16];
        let mut i = 0;
        while i < 16 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 4 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xedb8_8320
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        crc = (crc >> 4) ^ TABLE[(crc & 0xf) as usize];
        crc = (crc >> 4) ^ TABLE[(crc & 0xf) as usize];
    }
    !crc
}

// ---- Android misc ------------------------------------------------------------------

impl AbState {
    /// Read the 32-byte `bootloader_control` (at byte [`android::MISC_OFFSET`] of misc),
    /// checking magic, version, CRC and slot count as
    /// [`BootloaderControl::parse`](crate::android::BootloaderControl::parse) does. On
    /// [`FixedError::Magic`], [`FixedError::Version`] or [`FixedError::Crc`] a boot
    /// loader re-initialises with [`init_android`](Self::init_android), as U-Boot's
    /// `android_ab` and the AOSP HAL do.
    pub fn read_android(block: &[u8]) -> Result<AbState> {
        let b: [u8; android::SIZE] = block.try_into().map_err(|_| FixedError::Size)?;
        if u32::from_le_bytes([b[4], b[5], b[6], b[7]]) != android::MAGIC {
            return Err(FixedError::Magic);
        }
        if b[8] != android::VERSION {
            return Err(FixedError::Version);
        }
        if u32::from_le_bytes([b[28], b[29], b[30], b[31]]) != crc32(&b[..28]) {
            return Err(FixedError::Crc);
        }
        let c = BootloaderControl::from_checked(b);
        let n = usize::from(c.nb_slot());
        check_count(n)?;
        let mut st = AbState::fresh(Policy::AndroidAb, n);
        st.misc = b;
        Ok(st)
    }

    /// A fresh block for `nb_slot` slots with `good` booted and successful (AOSP's
    /// defaults: every slot priority 7, tries 7).
    pub fn init_android(nb_slot: usize, good: Slot) -> Result<AbState> {
        check_count(nb_slot)?;
        slot_in(good, nb_slot)?;
        let mut st = AbState::fresh(Policy::AndroidAb, nb_slot);
        st.misc = BootloaderControl::fresh(nb_slot as u8, good).raw();
        Ok(st)
    }

    /// Write the 32-byte block, with a fresh CRC, into `out` (exactly 32 bytes). Every
    /// bit other than the fields the rules changed is as read.
    pub fn write_android(&self, out: &mut [u8]) -> Result<()> {
        let out: &mut [u8; android::SIZE] = out.try_into().map_err(|_| FixedError::Size)?;
        match self.rules()? {
            Rules::Android(c) => {
                let mut b = c.raw();
                let (body, crc) = b.split_at_mut(28);
                crc.copy_from_slice(&crc32(body).to_le_bytes());
                *out = b;
                Ok(())
            }
            _ => Err(FixedError::Policy),
        }
    }
}

// ---- U-Boot environment ---------------------------------------------------------------

fn uboot_header(redundant: bool) -> usize {
    if redundant {
        5
    } else {
        4
    }
}

/// The same bounds as `ubootenv::Layout::check`.
fn uboot_size(size: usize, redundant: bool) -> Result<()> {
    if size < uboot_header(redundant) + 2 || size > MAX_ENV_SIZE {
        return Err(FixedError::Size);
    }
    Ok(())
}

/// Check one copy's CRC and return its flags byte (0 for a single copy) and data area.
fn uboot_copy(bytes: &[u8], redundant: bool) -> Result<(u8, &[u8])> {
    let header = uboot_header(redundant);
    let (head, data) = bytes.split_at_checked(header).ok_or(FixedError::Size)?;
    let crc: [u8; 4] = head
        .get(..4)
        .and_then(|c| c.try_into().ok())
        .ok_or(FixedError::Size)?;
    let stored = u32::from_le_bytes(crc);
    if stored != crc32(data) {
        return Err(FixedError::Crc);
    }
    uboot_entries(data, |_, _| ())?;
    Ok((head.get(4).copied().unwrap_or(0), data))
}

/// Walk the entries of a data area with every check of `UbootEnv::parse_copy`, giving
/// each name and value; returns the fill byte (the one after the terminator).
fn uboot_entries<'a>(data: &'a [u8], mut each: impl FnMut(&'a str, &'a str)) -> Result<u8> {
    let mut pos = 0;
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(FixedError::Syntax)?;
        if end == 0 {
            return Ok(rest.get(1).copied().unwrap_or(0));
        }
        let entry = core::str::from_utf8(rest.get(..end).unwrap_or_default())
            .map_err(|_| FixedError::Syntax)?;
        let (name, value) = entry.split_once('=').ok_or(FixedError::Syntax)?;
        if name.is_empty() {
            return Err(FixedError::Syntax);
        }
        each(name, value);
        pos += end + 1;
    }
}

/// RAUC's per-slot variable names, without formatting: `BOOT_A_LEFT`...
const UBOOT_LEFT: [&str; MAX_SLOTS] = ["BOOT_A_LEFT", "BOOT_B_LEFT", "BOOT_C_LEFT", "BOOT_D_LEFT"];
const GRUB_OK: [&str; MAX_SLOTS] = ["A_OK", "B_OK", "C_OK", "D_OK"];
const GRUB_TRY: [&str; MAX_SLOTS] = ["A_TRY", "B_TRY", "C_TRY", "D_TRY"];

/// `parse_order` of the RAUC module, without allocation: whitespace-separated upper-case
/// slot letters below `count`, each once.
fn parse_order(text: &str, count: usize) -> Result<Order> {
    let mut order = Order::new();
    for word in text.split_whitespace() {
        let mut chars = word.chars();
        let slot = match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_uppercase() => {
                Slot::from_letter(c).filter(|s| s.index() < count)
            }
            _ => None,
        }
        .ok_or(FixedError::Variable)?;
        if order.contains(slot) {
            return Err(FixedError::Variable);
        }
        order.push(slot);
    }
    Ok(order)
}

/// `parse_left` of the RAUC module: hexadecimal, optional `0x`, at most 8 digits.
fn parse_left(v: &str) -> Result<u32> {
    let digits = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    if digits.is_empty() || digits.len() > 8 {
        return Err(FixedError::Variable);
    }
    u32::from_str_radix(digits, 16).map_err(|_| FixedError::Variable)
}

/// Bytes written into a caller's buffer; what does not fit is counted, not written.
struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(x) = self.buf.get_mut(self.pos) {
                *x = b;
            }
            self.pos += 1;
        }
    }

    fn byte(&mut self, b: u8) {
        self.put(&[b]);
    }

    fn order(&mut self, order: &Order) {
        for (i, s) in order.as_slice().iter().enumerate() {
            if i > 0 {
                self.byte(b' ');
            }
            self.byte(s.letter() as u8);
        }
    }

    /// Lower-case hexadecimal without leading zeros, as `format!("{:x}")`.
    fn hex(&mut self, v: u32) {
        let mut started = false;
        for shift in (0..8).rev() {
            let d = ((v >> (shift * 4)) & 0xf) as u8;
            if d != 0 || started || shift == 0 {
                started = true;
                self.byte(if d < 10 { b'0' + d } else { b'a' + d - 10 });
            }
        }
    }
}

impl AbState {
    /// Read RAUC's U-Boot variables for `slots` slots from an environment: `copy0` alone
    /// (single copy), or `copy0` and `copy1` (redundant: the one with a valid CRC and the
    /// newer flags counts, as U-Boot decides). Each copy is the whole `size` bytes of the
    /// `fw_env.config` line or `CONFIG_ENV_SIZE`. Checked as `UbootEnv::parse_copy` and
    /// `RaucUboot::from_env` check it; if neither copy is valid, copy 0's error.
    pub fn read_uboot(copy0: &[u8], copy1: Option<&[u8]>, slots: usize) -> Result<AbState> {
        check_count(slots)?;
        let redundant = copy1.is_some();
        uboot_size(copy0.len(), redundant)?;
        let (current, flags, data) = match copy1 {
            None => {
                let (f, d) = uboot_copy(copy0, false)?;
                (0, f, d)
            }
            Some(copy1) => {
                if copy1.len() != copy0.len() {
                    return Err(FixedError::Size);
                }
                let c0 = uboot_copy(copy0, true);
                let c1 = uboot_copy(copy1, true);
                match (
                    newer_copy(c0.ok().map(|c| c.0), c1.ok().map(|c| c.0)),
                    c0,
                    c1,
                ) {
                    (Some(0), Ok((f, d)), _) => (0, f, d),
                    (Some(1), _, Ok((f, d))) => (1, f, d),
                    (_, Err(e), _) | (_, _, Err(e)) => return Err(e),
                    _ => return Err(FixedError::State),
                }
            }
        };
        // The last definition of a name counts, as in U-Boot's import.
        let mut order_text = None;
        let mut left_text: [Option<&str>; MAX_SLOTS] = [None; MAX_SLOTS];
        uboot_entries(data, |name, value| {
            if name == "BOOT_ORDER" {
                order_text = Some(value);
            } else if let Some(i) = UBOOT_LEFT.iter().position(|&n| n == name) {
                if let Some(l) = left_text.get_mut(i) {
                    *l = Some(value);
                }
            }
        })?;
        let order = match order_text {
            Some(t) => parse_order(t, slots)?,
            None => Order::default_for(slots),
        };
        let mut left = [UBOOT_DEFAULT_ATTEMPTS; MAX_SLOTS];
        for (l, t) in left.iter_mut().zip(left_text).take(slots) {
            if let Some(t) = t {
                *l = parse_left(t)?;
            }
        }
        let mut st = AbState::fresh(Policy::RaucUboot, slots);
        st.redundant = u8::from(redundant);
        st.copy = current;
        st.flags = flags;
        st.store(&Rules::Uboot(UbootRules {
            count: slots,
            order,
            left,
        }));
        Ok(st)
    }

    /// For a redundant environment, the copy (0 or 1) the state was read from, which is
    /// the `src` of [`write_uboot`](Self::write_uboot); 0 for a single copy.
    pub fn uboot_current_copy(&self) -> usize {
        usize::from(self.copy & 1)
    }

    /// Encode the environment with RAUC's variables changed into `out`, from `src`, the
    /// copy the state was read from, keeping every other variable, its order and the
    /// fill byte (`RaucUboot::to_env` + `UbootEnv::to_copy`, byte for byte). `out` must
    /// be as long as `src` and not the same buffer. Returns the copy `out` is to be
    /// written to: for a redundant environment the older one (flags + 1), so a power
    /// cut during the write leaves the current copy; call
    /// [`uboot_committed`](Self::uboot_committed) once the write has landed.
    ///
    /// Each variable is looked for again further on (a repeated name is written where
    /// its last definition is, as U-Boot's import keeps it), so the time grows with the
    /// square of the number of variables; environments hold tens to a few hundred.
    pub fn write_uboot(&self, src: &[u8], out: &mut [u8]) -> Result<usize> {
        let Rules::Uboot(rules) = self.rules()? else {
            return Err(FixedError::Policy);
        };
        let redundant = self.redundant != 0;
        uboot_size(src.len(), redundant)?;
        if out.len() != src.len() {
            return Err(FixedError::Size);
        }
        let (flags, data) = uboot_copy(src, redundant)?;
        if flags != self.flags {
            return Err(FixedError::Stale);
        }
        let header = uboot_header(redundant);
        let (head, body) = out.split_at_mut_checked(header).ok_or(FixedError::Size)?;
        let room = body.len();
        let mut w = Out { buf: body, pos: 0 };
        let count = usize::from(self.count);
        let mut seen = [false; MAX_SLOTS + 1];
        let mut pos = 0;
        let fill = uboot_entries(data, |name, value| {
            pos += name.len() + 1 + value.len() + 1;
            // A name defined again later is written there (U-Boot's import keeps the
            // last definition, at its place).
            let mut later = false;
            let _ = uboot_entries(data.get(pos..).unwrap_or_default(), |n, _| {
                later |= n == name;
            });
            if later {
                return;
            }
            let ours = if name == "BOOT_ORDER" {
                Some(MAX_SLOTS)
            } else {
                UBOOT_LEFT.iter().take(count).position(|&n| n == name)
            };
            match ours {
                Some(i) => {
                    if let Some(s) = seen.get_mut(i) {
                        *s = true;
                    }
                    put_uboot_var(&mut w, &rules, i);
                }
                None => {
                    w.put(name.as_bytes());
                    w.byte(b'=');
                    w.put(value.as_bytes());
                    w.byte(0);
                }
            }
        })?;
        // Variables not there yet are appended in the model's order.
        for i in core::iter::once(MAX_SLOTS).chain(0..count) {
            if !seen.get(i).copied().unwrap_or(true) {
                put_uboot_var(&mut w, &rules, i);
            }
        }
        w.byte(0);
        if w.pos > room {
            return Err(FixedError::Overflow);
        }
        let used = w.pos;
        for b in body.iter_mut().skip(used) {
            *b = fill;
        }
        for (h, c) in head.iter_mut().zip(crc32(body).to_le_bytes()) {
            *h = c;
        }
        if let Some(f) = head.get_mut(4) {
            *f = self.flags.wrapping_add(1);
        }
        Ok(if redundant {
            1 - self.uboot_current_copy()
        } else {
            0
        })
    }

    /// Record that the copy from [`write_uboot`](Self::write_uboot) was written: it is
    /// now the current one. Nothing to do for a single copy.
    pub fn uboot_committed(&mut self) -> Result<()> {
        let Rules::Uboot(_) = self.rules()? else {
            return Err(FixedError::Policy);
        };
        if self.redundant != 0 {
            self.copy = 1 - (self.copy & 1);
            self.flags = self.flags.wrapping_add(1);
        }
        Ok(())
    }
}

/// RAUC's U-Boot variables by index, as [`AbState::uboot_var`] numbers them:
/// `BOOT_ORDER`, then `BOOT_A_LEFT` to `BOOT_D_LEFT`.
pub const UBOOT_VARS: [&str; MAX_SLOTS + 1] = [
    "BOOT_ORDER",
    "BOOT_A_LEFT",
    "BOOT_B_LEFT",
    "BOOT_C_LEFT",
    "BOOT_D_LEFT",
];

impl AbState {
    /// RAUC's U-Boot variables as U-Boot's own `env_get` returns them (`None`: unset),
    /// for a boot loader whose environment is already imported: `boot_order` is
    /// `BOOT_ORDER`, `left[i]` is `BOOT_<slot i>_LEFT` (missing entries are unset).
    /// Checked as `RaucUboot::from_env` checks them. Write the result back with
    /// [`uboot_var`](Self::uboot_var) and `env_set`, all variables before one `env_save`.
    pub fn from_uboot_vars(
        boot_order: Option<&str>,
        left: &[Option<&str>],
        slots: usize,
    ) -> Result<AbState> {
        check_count(slots)?;
        let order = match boot_order {
            Some(t) => parse_order(t, slots)?,
            None => Order::default_for(slots),
        };
        let mut counts = [UBOOT_DEFAULT_ATTEMPTS; MAX_SLOTS];
        for (i, l) in counts.iter_mut().enumerate().take(slots) {
            if let Some(t) = left.get(i).copied().flatten() {
                *l = parse_left(t)?;
            }
        }
        let mut st = AbState::fresh(Policy::RaucUboot, slots);
        st.store(&Rules::Uboot(UbootRules {
            count: slots,
            order,
            left: counts,
        }));
        Ok(st)
    }

    /// The value of RAUC's U-Boot variable `index` ([`UBOOT_VARS`]: 0 is `BOOT_ORDER`,
    /// `1 + slot` is `BOOT_<slot>_LEFT`) as the model writes it (`"B A"`, hexadecimal
    /// counts), into `out`; returns its length. [`FixedError::Overflow`] if `out` is too
    /// short, [`FixedError::NoSuchSlot`] past the store's slots.
    pub fn uboot_var(&self, index: usize, out: &mut [u8]) -> Result<usize> {
        let Rules::Uboot(rules) = self.rules()? else {
            return Err(FixedError::Policy);
        };
        if index > usize::from(self.count) {
            return Err(FixedError::NoSuchSlot);
        }
        let room = out.len();
        let mut w = Out { buf: out, pos: 0 };
        match index.checked_sub(1).and_then(Slot::new) {
            None => w.order(&rules.order),
            Some(slot) => w.hex(rules.left(slot)),
        }
        if w.pos > room {
            return Err(FixedError::Overflow);
        }
        Ok(w.pos)
    }
}

/// `BOOT_ORDER=...\0` for `i == MAX_SLOTS`, else `BOOT_<i>_LEFT=<hex>\0`.
fn put_uboot_var(w: &mut Out<'_>, rules: &UbootRules, i: usize) {
    if i == MAX_SLOTS {
        w.put(b"BOOT_ORDER=");
        w.order(&rules.order);
    } else if let (Some(name), Some(slot)) = (UBOOT_LEFT.get(i), Slot::new(i)) {
        w.put(name.as_bytes());
        w.byte(b'=');
        w.hex(rules.left(slot));
    }
    w.byte(0);
}

// ---- GRUB environment block ---------------------------------------------------------

/// One line of a GRUB block: a comment (`#` .. newline) or a variable, the value raw
/// (escapes still in), as spans of the block.
enum GrubLine<'a> {
    Comment(&'a [u8]),
    Var(&'a str, &'a [u8]),
}

/// Undo grubenv escaping into `buf` (a value is shorter than the block) and check the
/// result is UTF-8, as `GrubEnv::parse` does.
fn unescape<'b>(raw: &[u8], buf: &'b mut [u8; BLOCK_SIZE]) -> Result<&'b str> {
    let mut n = 0;
    let mut escaped = false;
    for &c in raw {
        if !escaped && c == b'\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        *buf.get_mut(n).ok_or(FixedError::Syntax)? = c;
        n += 1;
    }
    core::str::from_utf8(buf.get(..n).unwrap_or_default()).map_err(|_| FixedError::Syntax)
}

/// Walk a 1024-byte block with every check of `GrubEnv::parse`, giving each line.
fn grub_lines<'a>(block: &'a [u8], mut each: impl FnMut(GrubLine<'a>)) -> Result<()> {
    if block.len() != BLOCK_SIZE {
        return Err(FixedError::Size);
    }
    if !block.starts_with(SIGNATURE.as_bytes()) {
        return Err(FixedError::Syntax);
    }
    let mut buf = [0u8; BLOCK_SIZE];
    let mut pos = SIGNATURE.len();
    while let Some(rest) = block.get(pos..).filter(|r| !r.is_empty()) {
        if rest.first() == Some(&b'#') {
            match rest.iter().position(|&c| c == b'\n') {
                Some(end) => {
                    let text = rest.get(1..end).unwrap_or_default();
                    core::str::from_utf8(text).map_err(|_| FixedError::Syntax)?;
                    each(GrubLine::Comment(text));
                    pos += end + 1;
                }
                None => {
                    // The padding: '#' to the end of the block.
                    if rest.iter().any(|&c| c != b'#') {
                        return Err(FixedError::Syntax);
                    }
                    return Ok(());
                }
            }
            continue;
        }
        let eq = rest
            .iter()
            .position(|&c| c == b'=' || c == b'\n')
            .filter(|&i| rest.get(i) == Some(&b'='))
            .ok_or(FixedError::Syntax)?;
        let name = core::str::from_utf8(rest.get(..eq).unwrap_or_default())
            .map_err(|_| FixedError::Syntax)?;
        if name.is_empty() || name.contains(['=', '\n', '\0']) || name.starts_with('#') {
            return Err(FixedError::Syntax);
        }
        let mut i = eq + 1;
        loop {
            match rest.get(i) {
                None => return Err(FixedError::Syntax),
                Some(b'\n') => break,
                Some(b'\\') => {
                    if rest.get(i + 1).is_none() {
                        return Err(FixedError::Syntax);
                    }
                    i += 2;
                }
                Some(_) => i += 1,
            }
        }
        let raw = rest.get(eq + 1..i).unwrap_or_default();
        unescape(raw, &mut buf)?;
        each(GrubLine::Var(name, raw));
        pos += i + 1;
    }
    Ok(())
}

/// Which of RAUC's GRUB variables `name` is: `ORDER` is `2 * MAX_SLOTS`, `<slot>_OK` is
/// `2 * slot`, `<slot>_TRY` is `2 * slot + 1`; only slots below `count`.
fn grub_var(name: &str, count: usize) -> Option<usize> {
    if name == "ORDER" {
        return Some(2 * MAX_SLOTS);
    }
    (0..count).find_map(|i| {
        if GRUB_OK.get(i) == Some(&name) {
            Some(2 * i)
        } else if GRUB_TRY.get(i) == Some(&name) {
            Some(2 * i + 1)
        } else {
            None
        }
    })
}

fn grub_flag(raw: Option<&[u8]>, buf: &mut [u8; BLOCK_SIZE]) -> Result<bool> {
    match raw.map(|r| unescape(r, buf)).transpose()? {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(_) => Err(FixedError::Variable),
    }
}

impl AbState {
    /// Read RAUC's GRUB variables for `slots` slots from a 1024-byte environment block,
    /// checked as `GrubEnv::parse` and `RaucGrub::from_env` check it. Uses 2 KiB of
    /// stack (values are unescaped into a block-sized buffer).
    pub fn read_grubenv(block: &[u8], slots: usize) -> Result<AbState> {
        check_count(slots)?;
        // The last definition of each variable counts, as GRUB reads it.
        let mut raw: [Option<&[u8]>; 2 * MAX_SLOTS + 1] = [None; 2 * MAX_SLOTS + 1];
        grub_lines(block, |line| {
            if let GrubLine::Var(name, value) = line {
                if let Some(r) = grub_var(name, slots).and_then(|i| raw.get_mut(i)) {
                    *r = Some(value);
                }
            }
        })?;
        let mut buf = [0u8; BLOCK_SIZE];
        let order = match raw.get(2 * MAX_SLOTS).copied().flatten() {
            Some(r) => parse_order(unescape(r, &mut buf)?, slots)?,
            None => Order::default_for(slots),
        };
        let mut ok = [false; MAX_SLOTS];
        let mut tried = [false; MAX_SLOTS];
        for i in 0..slots {
            if let (Some(o), Some(t)) = (ok.get_mut(i), tried.get_mut(i)) {
                *o = grub_flag(raw.get(2 * i).copied().flatten(), &mut buf)?;
                *t = grub_flag(raw.get(2 * i + 1).copied().flatten(), &mut buf)?;
            }
        }
        let mut st = AbState::fresh(Policy::RaucGrub, slots);
        st.store(&Rules::Grub(GrubRules {
            count: slots,
            order,
            ok,
            tried,
        }));
        Ok(st)
    }

    /// Encode the block with RAUC's variables changed into `out` (1024 bytes), from
    /// `src`, the block the state was read from, keeping every other variable and
    /// comment in its place (`RaucGrub::to_env` + `GrubEnv::to_bytes`, byte for byte).
    /// `out` must not be the same buffer as `src`. [`FixedError::Overflow`] if the
    /// change does not fit: write nothing then, as grub-editenv does.
    pub fn write_grubenv(&self, src: &[u8], out: &mut [u8]) -> Result<()> {
        let Rules::Grub(rules) = self.rules()? else {
            return Err(FixedError::Policy);
        };
        if out.len() != BLOCK_SIZE {
            return Err(FixedError::Size);
        }
        let count = usize::from(self.count);
        let mut w = Out { buf: out, pos: 0 };
        w.put(SIGNATURE.as_bytes());
        let mut seen = [false; 2 * MAX_SLOTS + 1];
        let mut buf = [0u8; BLOCK_SIZE];
        grub_lines(src, |line| match line {
            GrubLine::Comment(text) => {
                w.byte(b'#');
                w.put(text);
                w.byte(b'\n');
            }
            GrubLine::Var(name, raw) => match grub_var(name, count) {
                // The first definition takes the new value, later ones go (as
                // `GrubEnv::set_all` does).
                Some(i) => {
                    if let Some(s) = seen.get_mut(i).filter(|s| !**s) {
                        *s = true;
                        put_grub_var(&mut w, &rules, i);
                    }
                }
                None => {
                    w.put(name.as_bytes());
                    w.byte(b'=');
                    // Written as the model writes it: unescaped, then escaped again.
                    if let Ok(value) = unescape(raw, &mut buf) {
                        for &c in value.as_bytes() {
                            if c == b'\\' || c == b'\n' {
                                w.byte(b'\\');
                            }
                            w.byte(c);
                        }
                    }
                    w.byte(b'\n');
                }
            },
        })?;
        for i in core::iter::once(2 * MAX_SLOTS).chain(0..2 * count) {
            if !seen.get(i).copied().unwrap_or(true) {
                put_grub_var(&mut w, &rules, i);
            }
        }
        if w.pos > BLOCK_SIZE {
            return Err(FixedError::Overflow);
        }
        let used = w.pos;
        for b in w.buf.iter_mut().skip(used) {
            *b = b'#';
        }
        Ok(())
    }
}

/// `ORDER=...\n` for `i == 2 * MAX_SLOTS`, else `<slot>_OK=` / `<slot>_TRY=` 0 or 1.
fn put_grub_var(w: &mut Out<'_>, rules: &GrubRules, i: usize) {
    if i == 2 * MAX_SLOTS {
        w.put(b"ORDER=");
        w.order(&rules.order);
    } else {
        let slot = i / 2;
        let (names, values) = if i.is_multiple_of(2) {
            (&GRUB_OK, &rules.ok)
        } else {
            (&GRUB_TRY, &rules.tried)
        };
        if let (Some(name), Some(&v)) = (names.get(slot), values.get(slot)) {
            w.put(name.as_bytes());
            w.byte(b'=');
            w.byte(if v { b'1' } else { b'0' });
        }
    }
    w.byte(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_messages_static() {
        for (i, e) in FixedError::ALL.iter().enumerate() {
            assert_eq!(e.code(), i as i32 + 1);
            assert_eq!(FixedError::from_code(e.code()), Some(*e));
            assert!(!e.message().is_empty());
        }
        assert_eq!(FixedError::from_code(0), None);
        for p in [Policy::AndroidAb, Policy::RaucUboot, Policy::RaucGrub] {
            assert_eq!(Policy::from_code(p.code()), Some(p));
            assert_eq!(Policy::from_name(p.name()), Some(p));
        }
    }

    #[test]
    fn the_zero_value_and_damaged_states_are_refused() {
        let mut st = AbState::default();
        assert_eq!(st.boot(), Err(FixedError::State));
        assert_eq!(st.policy(), None);
        let mut st = AbState::init_android(2, Slot::A).unwrap();
        st.count = 3;
        assert_eq!(st.boot(), Err(FixedError::State));
        let mut env = crate::ubootenv::UbootEnv::new();
        env.set("BOOT_ORDER", "A B").unwrap();
        let l = crate::ubootenv::Layout {
            size: 64,
            redundant: false,
        };
        let bytes = env.to_copy(l, 0).unwrap();
        let mut st = AbState::read_uboot(&bytes, None, 2).unwrap();
        st.order = [1, 1, 0, 0];
        assert_eq!(st.boot(), Err(FixedError::State));
        st.order_len = 9;
        assert_eq!(st.mark_good(Slot::A), Err(FixedError::State));
    }

    #[test]
    fn crc32_is_zlibs() {
        let data = b"123456789";
        assert_eq!(crc32(data), 0xcbf4_3926);
        for len in [0usize, 1, 7, 28, 1000] {
            let d: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            assert_eq!(crc32(&d), crc32fast::hash(&d));
        }
    }

    #[test]
    fn hex_is_formatted_like_the_model() {
        for v in [0u32, 1, 9, 10, 0xf, 0x10, 0xabc, u32::MAX] {
            let mut b = [0u8; 8];
            let mut w = Out {
                buf: &mut b,
                pos: 0,
            };
            w.hex(v);
            let n = w.pos;
            assert_eq!(
                core::str::from_utf8(&b[..n]).unwrap(),
                alloc::format!("{v:x}")
            );
        }
    }
}
