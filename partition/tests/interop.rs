//! keel-partition against cgpt and sgdisk, both directions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_testsupport as tools;

use std::fs;
use std::path::Path;

use keel_bootflags::{PriorityPolicy, Slot, SlotState};
use keel_partition::{
    create_layout, open_disk, prioritize_partition, types, AbDisk, GptDisk, Layout, SlotSelector,
};
use tools::{run, run_ok, seeded_bytes, tool};

fn image(dir: &Path, mib: u64) -> std::path::PathBuf {
    let p = dir.join("disk.img");
    let f = fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

fn open_rw(p: &Path) -> GptDisk<std::fs::File> {
    GptDisk::open(open_disk(p, true).unwrap(), None).unwrap()
}

fn cgpt_state(cgpt: &Path, img: &Path, n: u32) -> SlotState {
    let get = |flag: &str| -> u8 {
        run_ok(
            cgpt,
            &["show", "-i", &n.to_string(), flag, img.to_str().unwrap()],
        )
        .trim()
        .parse()
        .unwrap()
    };
    SlotState {
        priority: get("-P"),
        tries: get("-T"),
        successful: get("-S") == 1,
    }
}

fn sgdisk_clean(sgdisk: &Path, img: &Path) {
    let o = run(sgdisk, &["-v", img.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        tools::stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success()
            && text.contains("No problems found")
            && !text.contains("Warning")
            && !text.contains("Caution"),
        "sgdisk -v:\n{text}"
    );
}

#[test]
fn keel_layout_and_flag_updates_read_by_cgpt_and_sgdisk() {
    let (Some(cgpt), Some(sgdisk)) = (tool("cgpt", "cgpt"), tool("sgdisk", "gdisk")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 128);
    let mut layout = Layout::flatcar(20 << 20);
    layout.slot_guids = Some((
        "11111111-2222-4333-8444-555555555555".parse().unwrap(),
        "11111111-2222-4333-8444-666666666666".parse().unwrap(),
    ));
    layout.extra.push(keel_partition::ExtraPartition {
        label: "ROOT".into(),
        type_guid: types::linux_data(),
        size: None,
        guid: None,
    });
    create_layout(&mut open_disk(&img, true).unwrap(), &layout).unwrap();
    sgdisk_clean(&sgdisk, &img);
    let info = run_ok(&sgdisk, &["-i", "3", img.to_str().unwrap()]);
    assert!(
        info.contains("11111111-2222-4333-8444-666666666666"),
        "{info}"
    );
    assert!(info.contains("'USR-B'"), "{info}");
    assert!(
        info.contains("First sector: 174080"),
        "1 MiB aligned: {info}"
    );
    run_ok(&cgpt, &["show", img.to_str().unwrap()]);
    assert_eq!(cgpt_state(&cgpt, &img, 2), st(1, 0, true));

    let mut ab = AbDisk::new(open_rw(&img), &SlotSelector::Auto, PriorityPolicy::Flatcar).unwrap();
    ab.set_active(Slot::B, Some(3)).unwrap();
    assert_eq!(cgpt_state(&cgpt, &img, 3), st(2, 3, false));
    assert_eq!(cgpt_state(&cgpt, &img, 2), st(1, 0, true));
    ab.boot().unwrap();
    assert_eq!(cgpt_state(&cgpt, &img, 3).tries, 2);
    ab.mark_good(Slot::B).unwrap();
    assert_eq!(cgpt_state(&cgpt, &img, 3), st(2, 0, true));
    ab.mark_bad(Slot::A).unwrap();
    assert_eq!(cgpt_state(&cgpt, &img, 2), st(0, 0, false));
    sgdisk_clean(&sgdisk, &img);
}

#[test]
fn keel_reads_what_cgpt_writes_and_keeps_numbers_and_other_bits() {
    let (Some(cgpt), Some(sgdisk)) = (tool("cgpt", "cgpt"), tool("sgdisk", "gdisk")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 32);
    let s = img.to_str().unwrap();
    run_ok(&cgpt, &["create", s]);
    // Partitions 1, 2 and 4 only: a gap at 3.
    run_ok(
        &cgpt,
        &[
            "add", "-i", "1", "-b", "2048", "-s", "8192", "-t", "efi", "-l", "EFI", s,
        ],
    );
    run_ok(
        &cgpt,
        &[
            "add",
            "-i",
            "2",
            "-b",
            "10240",
            "-s",
            "8192",
            "-t",
            "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6",
            "-l",
            "USR-A",
            "-P",
            "2",
            "-S",
            "1",
            s,
        ],
    );
    run_ok(
        &cgpt,
        &[
            "add",
            "-i",
            "4",
            "-b",
            "20480",
            "-s",
            "8192",
            "-t",
            "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6",
            "-l",
            "USR-B",
            "-P",
            "1",
            "-T",
            "5",
            "-S",
            "0",
            s,
        ],
    );
    // Bits outside 48-56 on slot B: legacy boot (2) and read-only (60), via sgdisk.
    run_ok(&sgdisk, &["-A", "4:set:2", "-A", "4:set:60", s]);
    let ab = AbDisk::new(open_rw(&img), &SlotSelector::Auto, PriorityPolicy::ChromeOs).unwrap();
    let [a, b] = ab.slots().unwrap();
    assert_eq!((a.partition.number, b.partition.number), (2, 4));
    assert_eq!(a.state, st(2, 0, true));
    assert_eq!(b.state, st(1, 5, false));
    let mut ab = ab;
    ab.set_active(Slot::B, Some(1)).unwrap();
    // Numbers kept (no partition 3 appears), other bits kept, cgpt agrees.
    let info = run_ok(&sgdisk, &["-i", "4", s]);
    assert!(info.contains("USR-B"), "{info}");
    let p3 = run(&sgdisk, &["-i", "3", s]);
    assert!(
        tools::stdout(&p3).contains("does not exist"),
        "{}",
        tools::stdout(&p3)
    );
    let attrs = ab.disk().partition(4).unwrap().attributes;
    assert_eq!(attrs & ((1 << 2) | (1 << 60)), (1 << 2) | (1 << 60));
    assert_eq!(cgpt_state(&cgpt, &img, 4), st(2, 1, false));
    assert_eq!(cgpt_state(&cgpt, &img, 2), st(1, 0, true));
    sgdisk_clean(&sgdisk, &img);
}

#[test]
fn prioritize_agrees_with_cgpt() {
    let Some(cgpt) = tool("cgpt", "cgpt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeded_bytes(77, 400);
    for round in 0..20 {
        let img = dir.path().join(format!("k{round}.img"));
        fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let s = img.to_str().unwrap();
        run_ok(&cgpt, &["create", s]);
        let n = 2 + (seeds[round] % 5) as u32;
        for i in 1..=n {
            let p = seeds[round * 10 + i as usize] % 16;
            run_ok(
                &cgpt,
                &[
                    "add",
                    "-i",
                    &i.to_string(),
                    "-b",
                    &(2048 * i).to_string(),
                    "-s",
                    "2048",
                    "-t",
                    "kernel",
                    "-l",
                    &format!("K{i}"),
                    "-P",
                    &p.to_string(),
                    s,
                ],
            );
        }
        let target = 1 + u32::from(seeds[round * 10 + 9]) % n;
        let keel_img = dir.path().join("keel.img");
        fs::copy(&img, &keel_img).unwrap();
        run_ok(&cgpt, &["prioritize", "-i", &target.to_string(), s]);
        let mut disk = open_rw(&keel_img);
        prioritize_partition(&mut disk, target, 15).unwrap();
        for i in 1..=n {
            let want: u8 = run_ok(&cgpt, &["show", "-i", &i.to_string(), "-P", s])
                .trim()
                .parse()
                .unwrap();
            let got = keel_bootflags::gpt::GptAttributes(disk.partition(i).unwrap().attributes)
                .state()
                .priority;
            assert_eq!(
                got, want,
                "round {round}, partition {i} of {n}, prioritize {target}"
            );
        }
    }
}

/// A slot's state, briefly.
fn st(priority: u8, tries: u8, successful: bool) -> SlotState {
    SlotState {
        priority,
        tries,
        successful,
    }
}
