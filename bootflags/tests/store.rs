//! The file stores survive a write cut short: the old state stays readable.

use std::fs;

use keel_bootflags::store::{Backend, FileStore};
use keel_bootflags::Slot;

#[test]
fn torn_redundant_uboot_write_leaves_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("env");
    let size = 0x1000;
    let backend = Backend::Uboot {
        size,
        redundant: true,
    };
    let mut s = FileStore::init(backend.clone(), &f, 2, Slot::A).unwrap();
    let old = s.status();
    let before = fs::read(&f).unwrap();
    s.control().set_active(Slot::B, None).unwrap();
    s.save().unwrap();
    let after = fs::read(&f).unwrap();
    let new = FileStore::open(backend.clone(), &f, 2).unwrap().status();
    assert_ne!(new, old);
    // Cut the write after every possible prefix of the copy it changed.
    let changed: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    let (lo, hi) = (changed[0], changed[changed.len() - 1]);
    assert!(hi - lo < size, "one copy written");
    for cut in [lo, lo + 1, (lo + hi) / 2, hi] {
        let mut torn = before.clone();
        torn[lo..cut].copy_from_slice(&after[lo..cut]);
        fs::write(&f, &torn).unwrap();
        let got = FileStore::open(backend.clone(), &f, 2).unwrap().status();
        assert_eq!(got, old, "cut at {cut}");
    }
}

#[test]
fn grubenv_is_replaced_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    let mut s = FileStore::init(Backend::GrubEnv, &f, 2, Slot::A).unwrap();
    let old = fs::read(&f).unwrap();
    s.control().set_active(Slot::B, None).unwrap();
    s.save().unwrap();
    assert_ne!(fs::read(&f).unwrap(), old);
    assert_eq!(fs::read(&f).unwrap().len(), 1024);
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn android_misc_keeps_the_rest_of_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("misc");
    let misc: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    fs::write(&f, &misc).unwrap();
    let mut s = FileStore::init(Backend::AndroidMisc, &f, 2, Slot::A).unwrap();
    s.control().mark_bad(Slot::B).unwrap();
    s.control().set_active(Slot::B, None).unwrap();
    s.save().unwrap();
    let after = fs::read(&f).unwrap();
    assert_eq!(after[..2048], misc[..2048]);
    assert_eq!(after[2080..], misc[2080..]);
    let s = FileStore::open(Backend::AndroidMisc, &f, 2).unwrap();
    assert_eq!(s.next_boot(), Some(Slot::B));
    // A misc image too small for the block is refused with its size.
    fs::write(&f, vec![0u8; 2000]).unwrap();
    let e = FileStore::init(Backend::AndroidMisc, &f, 2, Slot::A).unwrap_err();
    assert!(e.to_string().contains("2000"), "{e}");
}

#[test]
fn impossible_sizes_and_endless_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("env");
    for size in [usize::MAX, (16 << 20) + 1, 3] {
        for redundant in [false, true] {
            let b = Backend::Uboot { size, redundant };
            let e = FileStore::init(b.clone(), &f, 2, Slot::A).unwrap_err();
            assert!(e.to_string().contains("environment size"), "{size}: {e}");
            assert!(FileStore::open(b, &f, 2).is_err());
            assert!(!f.exists(), "nothing written for size {size}");
        }
    }
    // /dev/zero is no GRUB environment, and is not read to its end.
    let e = FileStore::open(Backend::GrubEnv, std::path::Path::new("/dev/zero"), 2).unwrap_err();
    assert!(e.to_string().contains("GRUB environment file"), "{e}");
    let e = FileStore::open(Backend::GrubEnv, dir.path(), 2).unwrap_err();
    assert!(!e.to_string().is_empty());
}

#[test]
fn every_backend_is_one_boot_control_and_a_failed_write_changes_nothing() {
    use keel_bootflags::BootControl;
    let dir = tempfile::tempdir().unwrap();
    let misc = dir.path().join("misc");
    fs::write(&misc, vec![0u8; 4096]).unwrap();
    let stores: Vec<(Backend, std::path::PathBuf)> = vec![
        (Backend::GrubEnv, dir.path().join("grubenv")),
        (
            Backend::Uboot {
                size: 0x2000,
                redundant: true,
            },
            dir.path().join("uboot"),
        ),
        (Backend::AndroidMisc, misc),
    ];
    for (backend, path) in stores {
        FileStore::init(backend.clone(), &path, 2, Slot::A).unwrap();
        let mut bc: Box<dyn BootControl> =
            Box::new(FileStore::open(backend.clone(), &path, 2).unwrap());
        assert!(!bc.rules().is_empty());
        bc.mark_bad(Slot::B).unwrap();
        bc.set_active(Slot::B, Some(1)).unwrap();
        assert_eq!(bc.next_boot().unwrap(), Some(Slot::B), "{backend:?}");
        assert_eq!(bc.boot().unwrap(), Some(Slot::B));
        // Every change is on disk before the call returns.
        let reopened = FileStore::open(backend.clone(), &path, 2).unwrap();
        assert_eq!(reopened.status(), bc.status().unwrap(), "{backend:?}");
        // A write that fails leaves the value as the disk has it.
        let before = bc.status().unwrap();
        let moved = path.with_extension("away");
        fs::rename(&path, &moved).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(bc.mark_good(Slot::B).is_err(), "{backend:?}");
        assert_eq!(bc.status().unwrap(), before, "{backend:?}");
        fs::remove_dir(&path).unwrap();
        fs::rename(&moved, &path).unwrap();
    }
}

#[test]
fn systemd_boot_entries_on_an_esp_are_renamed_as_systemd_does() {
    use keel_bootflags::blsdir::BlsDir;
    use keel_bootflags::BootControl;
    let esp = tempfile::tempdir().unwrap();
    let entries = esp.path().join("loader/entries");
    fs::create_dir_all(&entries).unwrap();
    for id in ["os-a", "os-b"] {
        fs::write(
            entries.join(format!("{id}.conf")),
            format!("title {id}\nlinux /vmlinuz\noptions root=PARTLABEL={id}\n"),
        )
        .unwrap();
    }
    fs::write(
        esp.path().join("loader/loader.conf"),
        "timeout 3\ndefault os-a.conf\n",
    )
    .unwrap();
    let names = || {
        let mut v: Vec<String> = fs::read_dir(&entries)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let mut s = BlsDir::open(esp.path(), &["os-a", "os-b"]).unwrap();
    assert_eq!(s.next_boot().unwrap(), Some(Slot::A));
    // New content in B: systemd-bless-boot's "bad", then armed with 2 tries.
    s.mark_bad(Slot::B).unwrap();
    assert_eq!(names(), ["os-a.conf", "os-b+0.conf"]);
    s.set_active(Slot::B, Some(2)).unwrap();
    assert_eq!(names(), ["os-a.conf", "os-b+2-0.conf"]);
    let conf = fs::read_to_string(esp.path().join("loader/loader.conf")).unwrap();
    // systemd-boot matches `default` against the whole file name, counter included: the
    // glob matches B while it has tries left, and nothing once they are spent.
    assert_eq!(
        conf, "timeout 3\ndefault os-b+[1-9]*.conf\n",
        "other settings kept"
    );
    // Each try renames the entry as systemd-boot does; exhausted, it sorts last.
    assert_eq!(s.boot().unwrap(), Some(Slot::B));
    assert_eq!(names(), ["os-a.conf", "os-b+1-1.conf"]);
    assert_eq!(s.boot().unwrap(), Some(Slot::B));
    assert_eq!(names(), ["os-a.conf", "os-b+0-2.conf"]);
    assert_eq!(s.boot().unwrap(), Some(Slot::A));
    // Everything is on the ESP: a fresh open agrees.
    let again = BlsDir::open(esp.path(), &["os-a", "os-b"]).unwrap();
    assert_eq!(again.status().unwrap(), s.status().unwrap());
    // Re-armed and healthy: blessed, the counter gone.
    s.set_active(Slot::B, Some(3)).unwrap();
    assert_eq!(s.boot().unwrap(), Some(Slot::B));
    s.mark_good(Slot::B).unwrap();
    assert_eq!(names(), ["os-a.conf", "os-b.conf"]);
    let conf = fs::read_to_string(esp.path().join("loader/loader.conf")).unwrap();
    assert_eq!(
        conf, "timeout 3\ndefault os-b.conf\n",
        "blessed: its plain name"
    );
    assert_eq!(s.next_boot().unwrap(), Some(Slot::B));
    // The file's content travels with its name.
    assert!(fs::read_to_string(entries.join("os-b.conf"))
        .unwrap()
        .contains("PARTLABEL=os-b"));
    // An id with two entry files is refused.
    fs::write(entries.join("os-b+1.conf"), "").unwrap();
    let e = BlsDir::open(esp.path(), &["os-a", "os-b"]).unwrap_err();
    assert!(e.to_string().contains("names 2 entry files"), "{e}");
}
