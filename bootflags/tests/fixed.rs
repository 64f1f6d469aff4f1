//! The allocation-free path (`fixed`, what C boot loaders call through
//! keel-bootflags-ffi) against the model: the same bytes accepted and refused, the same
//! states, the same choice at every boot and the same bytes written back, over random
//! environments (other variables, repeated names, escapes, comments, damage) and random
//! sequences of boots and agent operations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_bootflags::android::BootloaderControl;
use keel_bootflags::fixed::{AbState, FixedError, Policy};
use keel_bootflags::grubenv::GrubEnv;
use keel_bootflags::rauc::{RaucGrub, RaucUboot};
use keel_bootflags::ubootenv::{Layout, Redundant, UbootEnv};
use keel_bootflags::{AbControl, Slot};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Boot,
    SetActive(usize, Option<u8>),
    MarkGood(usize),
    MarkBad(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Boot),
        1 => (0..5usize, proptest::option::of(0..9u8)).prop_map(|(s, t)| Op::SetActive(s, t)),
        2 => (0..5usize).prop_map(Op::MarkGood),
        1 => (0..5usize).prop_map(Op::MarkBad),
    ]
}

/// Apply `op` to both; they must agree on success and on the slot booted.
fn apply(model: &mut impl AbControl, fixed: &mut AbState, op: &Op) {
    let slot = |i: usize| Slot::new(i);
    match *op {
        Op::Boot => {
            let b = fixed.boot().unwrap();
            assert_eq!(b.slot, model.boot(), "{op:?}");
        }
        Op::SetActive(i, t) => {
            let m = slot(i).map(|s| model.set_active(s, t).is_ok());
            let f = slot(i).map(|s| fixed.set_active(s, t).is_ok());
            assert_eq!(m, f, "{op:?}");
        }
        Op::MarkGood(i) => {
            let m = slot(i).map(|s| model.mark_good(s).is_ok());
            let f = slot(i).map(|s| fixed.mark_good(s).is_ok());
            assert_eq!(m, f, "{op:?}");
        }
        Op::MarkBad(i) => {
            let m = slot(i).map(|s| model.mark_bad(s).is_ok());
            let f = slot(i).map(|s| fixed.mark_bad(s).is_ok());
            assert_eq!(m, f, "{op:?}");
        }
    }
    same_states(model, fixed);
}

fn same_states(model: &impl AbControl, fixed: &AbState) {
    assert_eq!(model.slot_count(), fixed.slot_count());
    for s in Slot::all(4) {
        assert_eq!(model.state(s).ok(), fixed.state(s).ok(), "slot {s}");
        assert_eq!(
            model.is_bootable(s).ok(),
            fixed.is_bootable(s).ok(),
            "slot {s}"
        );
    }
}

// ---- Android ----

proptest! {
    #[test]
    fn android_agrees(nb in 1..=4usize, good in 0..4usize, ops in proptest::collection::vec(op(), 0..40),
                      noise in proptest::collection::vec(any::<u8>(), 8)) {
        prop_assume!(good < nb);
        let mut model = BootloaderControl::new(nb as u8, Slot::new(good).unwrap()).unwrap();
        // Reserved bytes set, so "every other bit kept" is checked too.
        let mut bytes = model.to_bytes();
        bytes[20..28].copy_from_slice(&noise);
        bytes[11] = noise[0];
        let crc = crc(&bytes[..28]);
        bytes[28..].copy_from_slice(&crc.to_le_bytes());
        model = BootloaderControl::parse(&bytes).unwrap();
        let mut fixed = AbState::read_android(&bytes).unwrap();
        prop_assert_eq!(fixed.policy(), Some(Policy::AndroidAb));
        same_states(&model, &fixed);
        for op in &ops {
            apply(&mut model, &mut fixed, op);
            let mut out = [0u8; 32];
            fixed.write_android(&mut out).unwrap();
            prop_assert_eq!(out, model.to_bytes());
        }
    }

    #[test]
    fn android_accepts_what_the_parser_accepts(nb in 1..=4usize, flips in proptest::collection::vec((0..32usize, any::<u8>()), 0..3), fix_crc: bool) {
        let mut b = BootloaderControl::new(nb as u8, Slot::A).unwrap().to_bytes();
        for (at, x) in flips {
            b[at] ^= x;
        }
        if fix_crc {
            let c = crc(&b[..28]);
            b[28..].copy_from_slice(&c.to_le_bytes());
        }
        let model = BootloaderControl::parse(&b);
        let fixed = AbState::read_android(&b);
        prop_assert_eq!(model.is_ok(), fixed.is_ok(), "{:?} / {:?}", model, fixed);
        if let (Ok(m), Ok(f)) = (model, fixed) {
            same_states(&m, &f);
        }
    }
}

// ---- U-Boot ----

const UBOOT_NAMES: [&str; 8] = [
    "BOOT_ORDER",
    "BOOT_A_LEFT",
    "BOOT_B_LEFT",
    "BOOT_C_LEFT",
    "bootargs",
    "BOOT_ORDERX",
    "x",
    "BOOT_D_LEFT",
];
const UBOOT_VALUES: [&str; 14] = [
    "A B",
    "B A",
    "A",
    "",
    "3",
    "0x10",
    "f",
    "zz",
    "A A",
    "C",
    "B  \u{a0}A",
    "+a",
    "123456789",
    "console=ttyS0 root=/dev/mmcblk0p2",
];

/// A data area from entries (names may repeat), terminated and filled.
fn uboot_copy(entries: &[(usize, usize)], fill: u8, size: usize, flags: Option<u8>) -> Vec<u8> {
    let mut data = Vec::new();
    for &(n, v) in entries {
        data.extend_from_slice(UBOOT_NAMES[n].as_bytes());
        data.push(b'=');
        data.extend_from_slice(UBOOT_VALUES[v].as_bytes());
        data.push(0);
    }
    data.push(0);
    let header = if flags.is_some() { 5 } else { 4 };
    data.resize(size - header, fill);
    let mut out = crc(&data).to_le_bytes().to_vec();
    out.extend(flags);
    out.extend_from_slice(&data);
    out
}

fn entries() -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((0..UBOOT_NAMES.len(), 0..UBOOT_VALUES.len()), 0..8)
}

proptest! {
    #[test]
    fn uboot_single_agrees(count in 1..=4usize, e in entries(), fill in prop_oneof![Just(0u8), Just(0xffu8)],
                           size in prop_oneof![Just(96usize), Just(0x400usize)],
                           ops in proptest::collection::vec(op(), 0..30)) {
        let src = uboot_copy(&e, fill, size, None);
        let l = Layout { size, redundant: false };
        let model = UbootEnv::parse_copy(&src, l).and_then(|c| RaucUboot::from_env(c.env, count));
        let fixed = AbState::read_uboot(&src, None, count);
        prop_assert_eq!(model.is_ok(), fixed.is_ok(), "{:?} / {:?}", model, fixed);
        let (Ok(mut model), Ok(mut fixed)) = (model, fixed) else { return Ok(()) };
        same_states(&model, &fixed);
        for op in &ops {
            apply(&mut model, &mut fixed, op);
            let m = model.to_env().and_then(|env| env.to_copy(l, 0));
            let mut out = vec![0u8; size];
            let f = fixed.write_uboot(&src, &mut out);
            prop_assert_eq!(m.is_ok(), f.is_ok(), "{:?} / {:?}", m, f);
            if let Ok(m) = m {
                prop_assert_eq!(f.unwrap(), 0);
                prop_assert_eq!(&out, &m);
            } else {
                prop_assert_eq!(f, Err(FixedError::Overflow));
            }
        }
    }

    #[test]
    fn uboot_redundant_agrees(count in 1..=4usize, e0 in entries(), e1 in entries(), f0: u8, f1: u8,
                              damage in 0..4u8, ops in proptest::collection::vec(op(), 0..20)) {
        let size = 0x200;
        let mut c0 = uboot_copy(&e0, 0, size, Some(f0));
        let mut c1 = uboot_copy(&e1, 0, size, Some(f1));
        if damage & 1 != 0 { c0[7] ^= 0x40; }
        if damage & 2 != 0 { c1[9] ^= 0x40; }
        let l = Layout { size, redundant: true };
        let model = Redundant::from_copies(UbootEnv::parse_copy(&c0, l), UbootEnv::parse_copy(&c1, l))
            .and_then(|r| Ok((RaucUboot::from_env(r.env.clone(), count)?, r)));
        let fixed = AbState::read_uboot(&c0, Some(&c1), count);
        prop_assert_eq!(model.is_ok(), fixed.is_ok(), "{:?} / {:?}", model, fixed);
        let (Ok((mut model, mut r)), Ok(mut fixed)) = (model, fixed) else { return Ok(()) };
        prop_assert_eq!(fixed.uboot_current_copy(), r.current);
        let mut copies = [c0, c1];
        for op in &ops {
            apply(&mut model, &mut fixed, op);
            let env = model.to_env().unwrap();
            let Ok((index, bytes)) = r.next_write(&env, size) else { continue };
            let src = copies[fixed.uboot_current_copy()].clone();
            let mut out = vec![0u8; size];
            let written = fixed.write_uboot(&src, &mut out).unwrap();
            prop_assert_eq!(written, index);
            prop_assert_eq!(&out, &bytes);
            // A copy given from the wrong side is refused (its flags are older).
            let older = &copies[written];
            if older[4] != src[4] && UbootEnv::parse_copy(older, l).is_ok() {
                prop_assert_eq!(fixed.write_uboot(older, &mut vec![0u8; size]), Err(FixedError::Stale));
            }
            copies[written] = out;
            r.committed(env);
            fixed.uboot_committed().unwrap();
            // And both read the new pair the same way.
            let back = AbState::read_uboot(&copies[0], Some(&copies[1]), count).unwrap();
            prop_assert_eq!(back.uboot_current_copy(), written);
            same_states(&model, &back);
        }
    }
}

// ---- GRUB ----

const GRUB_LINES: [&str; 16] = [
    "ORDER=A B\n",
    "ORDER=B A\n",
    "ORDER=B\\ A\n",
    "ORDER=A A\n",
    "A_OK=1\n",
    "A_OK=0\n",
    "A_TRY=1\n",
    "B_OK=\\1\n",
    "B_TRY=0\n",
    "C_OK=1\n",
    "B_OK=yes\n",
    "saved_entry=x\\\\y\n",
    "kernel_args=a\\\nb\n",
    "# a comment\n",
    "#\n",
    "D_TRY=1\n",
];

fn grub_block(lines: &[usize], extra: usize) -> Vec<u8> {
    let mut b = b"# GRUB Environment Block\n".to_vec();
    for &l in lines {
        b.extend_from_slice(GRUB_LINES[l].as_bytes());
    }
    b.extend(std::iter::repeat_n(b'k', extra));
    if extra > 0 {
        b.extend_from_slice(b"=v\n");
    }
    b.resize(1024.max(b.len()), b'#');
    b
}

proptest! {
    #[test]
    fn grub_agrees(count in 1..=4usize, lines in proptest::collection::vec(0..GRUB_LINES.len(), 0..10),
                   extra in prop_oneof![Just(0usize), 800..990usize],
                   ops in proptest::collection::vec(op(), 0..30)) {
        let src = grub_block(&lines, extra);
        let model = GrubEnv::parse(&src).and_then(|e| RaucGrub::from_env(e, count));
        let fixed = AbState::read_grubenv(&src, count);
        prop_assert_eq!(model.is_ok(), fixed.is_ok(), "{:?} / {:?}", model, fixed);
        let (Ok(mut model), Ok(mut fixed)) = (model, fixed) else { return Ok(()) };
        same_states(&model, &fixed);
        for op in &ops {
            apply(&mut model, &mut fixed, op);
            let m = model.to_env().and_then(|env| env.to_bytes());
            let mut out = [0u8; 1024];
            let f = fixed.write_grubenv(&src, &mut out);
            prop_assert_eq!(m.is_ok(), f.is_ok(), "{:?} / {:?}", m, f);
            if let Ok(m) = m {
                prop_assert_eq!(out.to_vec(), m.to_vec());
            } else {
                prop_assert_eq!(f, Err(FixedError::Overflow));
            }
        }
    }

    #[test]
    fn grub_accepts_what_the_parser_accepts(lines in proptest::collection::vec(0..GRUB_LINES.len(), 0..6),
                                             flips in proptest::collection::vec((0..1024usize, any::<u8>()), 0..2)) {
        let mut b = grub_block(&lines, 0);
        for (at, x) in flips {
            b[at] ^= x;
        }
        let model = GrubEnv::parse(&b).and_then(|e| RaucGrub::from_env(e, 2));
        let fixed = AbState::read_grubenv(&b, 2);
        prop_assert_eq!(model.is_ok(), fixed.is_ok(), "{:?} / {:?}", model, fixed);
    }
}

#[test]
fn wrong_policy_sizes_and_counts_are_refused() {
    let android = AbState::init_android(2, Slot::A).unwrap();
    assert_eq!(
        android.write_uboot(&[0; 64], &mut [0; 64]),
        Err(FixedError::Policy)
    );
    assert_eq!(
        android.write_grubenv(&[0; 1024], &mut [0; 1024]),
        Err(FixedError::Policy)
    );
    assert_eq!(android.write_android(&mut [0; 31]), Err(FixedError::Size));
    assert_eq!(AbState::read_android(&[0; 33]), Err(FixedError::Size));
    assert_eq!(
        AbState::init_android(5, Slot::A),
        Err(FixedError::SlotCount)
    );
    assert_eq!(
        AbState::init_android(2, Slot::C),
        Err(FixedError::NoSuchSlot)
    );
    assert_eq!(AbState::read_uboot(&[0; 5], None, 2), Err(FixedError::Size));
    let grub = GrubEnv::new().to_bytes().unwrap();
    assert_eq!(AbState::read_grubenv(&grub, 0), Err(FixedError::SlotCount));
    let st = AbState::read_grubenv(&grub, 2).unwrap();
    assert_eq!(
        st.write_grubenv(&grub, &mut [0; 1000]),
        Err(FixedError::Size)
    );
    assert_eq!(st.write_android(&mut [0; 32]), Err(FixedError::Policy));
}

/// zlib CRC-32, written out so the test does not trust the crate's.
fn crc(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

proptest! {
    /// The variables path (`env_get` / `env_set` inside U-Boot) agrees with the model
    /// over an environment holding the same variables.
    #[test]
    fn uboot_vars_agree(count in 1..=4usize, order in proptest::option::of(0..UBOOT_VALUES.len()),
                        left in proptest::collection::vec(proptest::option::of(0..UBOOT_VALUES.len()), 4),
                        ops in proptest::collection::vec(op(), 0..20)) {
        let order = order.map(|i| UBOOT_VALUES[i]);
        let left: Vec<Option<&str>> = left.iter().map(|v| v.map(|i| UBOOT_VALUES[i])).collect();
        let mut env = UbootEnv::new();
        if let Some(o) = order {
            env.set("BOOT_ORDER", o).unwrap();
        }
        for (i, l) in left.iter().enumerate() {
            if let Some(l) = l {
                env.set(keel_bootflags::fixed::UBOOT_VARS[i + 1], l).unwrap();
            }
        }
        let model = RaucUboot::from_env(env, count);
        let fixed = AbState::from_uboot_vars(order, &left, count);
        prop_assert_eq!(model.is_ok(), fixed.is_ok(), "{:?} / {:?}", model, fixed);
        let (Ok(mut model), Ok(mut fixed)) = (model, fixed) else { return Ok(()) };
        for op in &ops {
            apply(&mut model, &mut fixed, op);
            let env = model.to_env().unwrap();
            for (i, name) in keel_bootflags::fixed::UBOOT_VARS.iter().enumerate().take(count + 1) {
                let mut buf = [0u8; 16];
                let n = fixed.uboot_var(i, &mut buf).unwrap();
                prop_assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), env.get(name).unwrap());
            }
            prop_assert_eq!(fixed.uboot_var(count + 1, &mut [0u8; 16]), Err(FixedError::NoSuchSlot));
            prop_assert_eq!(fixed.uboot_var(1, &mut [0u8; 0]), Err(FixedError::Overflow));
        }
    }
}
