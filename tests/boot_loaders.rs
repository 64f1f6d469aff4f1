//! Proof by the real boot loaders under OVMF in qemu, on a disk Keel laid out: GRUB
//! (RAUC's reference script over the grubenv keel-bootflags wrote) and systemd-boot (boot
//! counting over the entries keel-bootflags named and renamed) choose the slot by their
//! own code, count their tries on the ESP, and agree with keel-bootflags' model of them
//! boot after boot, through arming, fallback, commit and marking bad. The boot loader (or
//! the EFI program an entry starts) prints the slot it chose on the serial console and
//! powers the machine off; one qemu run is one boot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use keel::bootflags::blsdir::BlsDir;
use keel::bootflags::grubenv::GrubEnv;
use keel::bootflags::rauc::RaucGrub;
use keel::bootflags::BootControl;
use keel::bootflags::{AbControl, Slot};
use keel::io::{ReadAt, Region, WriteAt};
use keel::partition::{create_layout, GptDisk, Layout};

const ESP_BYTES: u64 = 8 << 20;

/// The firmware, the boot loader builder and the FAT tools (all Debian packages).
struct Uefi {
    qemu: PathBuf,
    code: PathBuf,
    vars: PathBuf,
    mkstandalone: PathBuf,
    mkfs: PathBuf,
    mcopy: PathBuf,
}

fn uefi() -> Option<Uefi> {
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
    let code = file("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf")?;
    let vars = file("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf")?;
    let mkstandalone = tool("grub-mkstandalone", "grub-common")?;
    file("/usr/lib/grub/x86_64-efi/modinfo.sh", "grub-efi-amd64-bin")?;
    let mkfs = tool("mkfs.vfat", "dosfstools")?;
    let mcopy = tool("mcopy", "mtools")?;
    file(
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "systemd-boot-efi",
    )?;
    Some(Uefi {
        qemu,
        code,
        vars,
        mkstandalone,
        mkfs,
        mcopy,
    })
}

/// RAUC's reference GRUB script (its integration documentation, the version that resets
/// the tries only when no slot is left), reading and saving the environment on the ESP;
/// each entry prints its slot and the kernel argument Keel stored, then powers off.
const RAUC_GRUB_CFG: &str = r#"set timeout=0
set default=0
any_ok=0
set ORDER="A B"
set A_OK=0
set B_OK=0
set A_TRY=0
set B_TRY=0
search --no-floppy --file --set=esp /EFI/keel/grubenv
load_env --file ($esp)/EFI/keel/grubenv
for SLOT in $ORDER; do
    if [ "$SLOT" == "A" ]; then
        INDEX=0
        OK=$A_OK
        TRY=$A_TRY
        A_TRY=1
    fi
    if [ "$SLOT" == "B" ]; then
        INDEX=1
        OK=$B_OK
        TRY=$B_TRY
        B_TRY=1
    fi
    if [ "$OK" -eq 1 -a "$TRY" -eq 0 ]; then
        default=$INDEX
        any_ok=1
        break
    fi
done
if [ "$any_ok" -eq 0 ]; then
    if [ "$A_OK" -eq 1 -a "$A_TRY" -eq 1 ]; then
        A_TRY=0
    fi
    if [ "$B_OK" -eq 1 -a "$B_TRY" -eq 1 ]; then
        B_TRY=0
    fi
fi
save_env --file ($esp)/EFI/keel/grubenv A_TRY B_TRY
menuentry "Slot A" {
    echo "KEEL-BOOT slot=A args=[$KEEL_A_ARGS]"
    halt
}
menuentry "Slot B" {
    echo "KEEL-BOOT slot=B args=[$KEEL_B_ARGS]"
    halt
}
"#;

/// A GPT disk laid out by keel-partition whose ESP is a FAT filesystem made from a local
/// tree before each boot and read back into it after: Keel changes the tree between
/// boots, the boot loader changes the filesystem during them.
struct Machine<'u> {
    uefi: &'u Uefi,
    dir: PathBuf,
    esp: (u64, u64),
}

impl<'u> Machine<'u> {
    fn new(uefi: &'u Uefi, dir: &Path) -> Machine<'u> {
        let disk = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("disk.img"))
            .unwrap();
        disk.set_len(ESP_BYTES + (16 << 20)).unwrap();
        let mut layout = Layout::flatcar(4 << 20);
        layout.esp_size = ESP_BYTES;
        create_layout(&mut &disk, &layout).unwrap();
        let g = GptDisk::open(&disk, None).unwrap();
        let p = g.partition_by_label("ESP").unwrap();
        let esp = (p.first_lba * g.sector_size(), p.sectors() * g.sector_size());
        fs::copy(&uefi.vars, dir.join("vars.fd")).unwrap();
        fs::create_dir_all(dir.join("esp/EFI/BOOT")).unwrap();
        fs::create_dir_all(dir.join("esp/EFI/keel")).unwrap();
        Machine {
            uefi,
            dir: dir.to_path_buf(),
            esp,
        }
    }

    /// The ESP's tree on this side.
    fn tree(&self) -> PathBuf {
        self.dir.join("esp")
    }

    /// A standalone GRUB at `to` (in the ESP tree) running `cfg`, printing on the serial
    /// port with a terminal wide enough that a long kernel argument stays on one line.
    fn grub(&self, to: &str, cfg: &str) {
        let cfg_file = self.dir.join("grub.cfg");
        let serial =
            "serial --unit=0 --speed=115200\nterminal_output serial\nterminfo -g 1000x25 serial\n";
        fs::write(&cfg_file, format!("{serial}{cfg}")).unwrap();
        let modules = "part_gpt fat search search_fs_file loadenv test echo halt normal \
                       configfile memdisk tar serial terminfo";
        run_ok(
            &self.uefi.mkstandalone,
            &[
                "-O",
                "x86_64-efi",
                "-o",
                self.tree().join(to).to_str().unwrap(),
                &format!("--install-modules={modules}"),
                "--modules=part_gpt fat",
                "--locales=",
                "--themes=",
                "--fonts=",
                &format!("boot/grub/grub.cfg={}", cfg_file.display()),
            ],
        );
    }

    fn disk(&self) -> fs::File {
        fs::File::options()
            .read(true)
            .write(true)
            .open(self.dir.join("disk.img"))
            .unwrap()
    }

    /// The tree as a new FAT filesystem on the ESP.
    fn write_esp(&self) {
        let fat = self.dir.join("esp.img");
        let _ = fs::remove_file(&fat);
        run_ok(
            &self.uefi.mkfs,
            &["-C", fat.to_str().unwrap(), &(ESP_BYTES / 1024).to_string()],
        );
        let img = format!("-i{}", fat.display());
        let mut args = vec![img.clone(), "-s".into()];
        for e in fs::read_dir(self.tree()).unwrap() {
            args.push(e.unwrap().path().display().to_string());
        }
        args.push("::/".into());
        run_ok(
            &self.uefi.mcopy,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let disk = self.disk();
        Region::new(&disk, self.esp.0, self.esp.1)
            .unwrap()
            .write_all_at(&fs::read(&fat).unwrap(), 0)
            .unwrap();
    }

    /// The ESP's filesystem, as the boot loader left it, back into the tree.
    fn read_esp(&self) {
        let disk = self.disk();
        let mut bytes = vec![0u8; self.esp.1 as usize];
        Region::new(&disk, self.esp.0, self.esp.1)
            .unwrap()
            .read_exact_at(&mut bytes, 0)
            .unwrap();
        let fat = self.dir.join("esp.img");
        fs::write(&fat, &bytes).unwrap();
        fs::remove_dir_all(self.tree()).unwrap();
        fs::create_dir_all(self.tree()).unwrap();
        let img = format!("-i{}", fat.display());
        run_ok(
            &self.uefi.mcopy,
            &[&img, "-s", "-n", "::/*", self.tree().to_str().unwrap()],
        );
    }

    /// Power on with the tree as the ESP; the boot loader chooses, prints and powers
    /// off; its changes come back into the tree. Returns (slot, args).
    fn boot(&self) -> (Slot, String) {
        self.write_esp();
        let serial = self.dir.join("serial.log");
        let _ = fs::remove_file(&serial);
        let drive = |f: &str, ro: bool| {
            format!(
                "if=pflash,format=raw,{}file={f}",
                if ro { "readonly=on," } else { "" }
            )
        };
        let out = Command::new(&self.uefi.qemu)
            .args([
                "-machine",
                "q35",
                "-m",
                "256",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .args(["-drive", &drive(self.uefi.code.to_str().unwrap(), true)])
            .args([
                "-drive",
                &drive(self.dir.join("vars.fd").to_str().unwrap(), false),
            ])
            .args([
                "-drive",
                &format!(
                    "file={},format=raw,if=virtio",
                    self.dir.join("disk.img").display()
                ),
            ])
            .args(["-serial", &format!("file:{}", serial.display())])
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&fs::read(&serial).unwrap_or_default()).replace('\r', "");
        assert!(
            out.status.success(),
            "qemu: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.read_esp();
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.split("KEEL-BOOT ").nth(1))
            .unwrap_or_else(|| panic!("the boot loader printed no choice:\n{text}"))
            .to_string();
        let slot = match line.strip_prefix("slot=").and_then(|r| r.chars().next()) {
            Some('A') => Slot::A,
            Some('B') => Slot::B,
            _ => panic!("{line}"),
        };
        let args = line
            .split_once("args=[")
            .unwrap()
            .1
            .trim_end()
            .trim_end_matches(']')
            .to_string();
        (slot, args)
    }

    fn grubenv(&self) -> GrubEnv {
        GrubEnv::parse(&fs::read(self.tree().join("EFI/keel/grubenv")).unwrap()).unwrap()
    }

    /// Keel changes the GRUB boot state (as the agent does through its BootControl).
    fn keel(&self, change: impl FnOnce(&mut RaucGrub)) {
        let mut rauc = RaucGrub::from_env(self.grubenv(), 2).unwrap();
        change(&mut rauc);
        fs::write(
            self.tree().join("EFI/keel/grubenv"),
            rauc.to_env().unwrap().to_bytes().unwrap(),
        )
        .unwrap();
    }
}

/// The boot loader's choice and the state it left agree with keel-bootflags' model.
fn boot_and_compare(m: &Machine<'_>, what: &str) -> Slot {
    let mut model = RaucGrub::from_env(m.grubenv(), 2).unwrap();
    let predicted = model.boot();
    let (slot, args) = m.boot();
    assert_eq!(
        Some(slot),
        predicted,
        "{what}: GRUB chose {slot}, Keel's model {predicted:?}"
    );
    let after = RaucGrub::from_env(m.grubenv(), 2).unwrap();
    for s in [Slot::A, Slot::B] {
        assert_eq!(
            after.state(s).unwrap(),
            model.state(s).unwrap(),
            "{what}: slot {s} after the boot"
        );
    }
    let stored = m
        .grubenv()
        .get(&format!("KEEL_{slot}_ARGS"))
        .unwrap_or("")
        .to_string();
    assert_eq!(args, stored, "{what}: the kernel argument GRUB read");
    slot
}

#[test]
fn grub_follows_keels_environment_and_counts_as_keel_predicts() {
    let Some(uefi) = uefi() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A fresh environment as the image builder writes it: A good and first; each slot's
    // kernel argument, with the quotes and spaces a dm-mod.create= line has.
    let mut rauc = RaucGrub::init(2, Slot::A).unwrap();
    rauc.set_var("KEEL_A_ARGS", r#"dm-mod.create="usr,,,ro,0 8 verity 1 PARTUUID=aa 4096 4096 8 9 sha256 0f salt" mount.usr=/dev/dm-0"#).unwrap();
    rauc.set_var("KEEL_B_ARGS", "mount.usr=/dev/dm-0 verity.usrhash=5a17")
        .unwrap();
    let m = Machine::new(&uefi, dir.path());
    m.grub("EFI/BOOT/BOOTX64.EFI", RAUC_GRUB_CFG);
    fs::write(
        m.tree().join("EFI/keel/grubenv"),
        rauc.to_env().unwrap().to_bytes().unwrap(),
    )
    .unwrap();

    assert_eq!(boot_and_compare(&m, "first boot"), Slot::A);
    // Keel arms B; B's one try; it fails its health check and Keel marks it bad: back to A.
    m.keel(|r| r.set_active(Slot::B, None).unwrap());
    assert_eq!(boot_and_compare(&m, "armed B"), Slot::B);
    m.keel(|r| r.mark_bad(Slot::B).unwrap());
    assert_eq!(boot_and_compare(&m, "B marked bad"), Slot::A);
    // Armed again, B boots and is committed: it keeps booting.
    m.keel(|r| r.set_active(Slot::B, None).unwrap());
    assert_eq!(boot_and_compare(&m, "re-armed B"), Slot::B);
    m.keel(|r| r.mark_good(Slot::B).unwrap());
    assert_eq!(boot_and_compare(&m, "B committed"), Slot::B);
    // B hangs before its commit: GRUB falls back to A, and with every try spent it resets
    // the tries and starts from A again, as the model says.
    assert_eq!(boot_and_compare(&m, "B not committed"), Slot::A);
    assert_eq!(boot_and_compare(&m, "both tried"), Slot::A);
}

#[test]
fn systemd_boot_counts_and_falls_back_as_keel_predicts() {
    let Some(uefi) = uefi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = Machine::new(&uefi, dir.path());
    fs::copy(
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        m.tree().join("EFI/BOOT/BOOTX64.EFI"),
    )
    .unwrap();
    // Each slot's "kernel" is an EFI program that prints the slot and powers off.
    for s in ["A", "B"] {
        m.grub(
            &format!("EFI/keel/slot-{s}.efi"),
            &format!("echo \"KEEL-BOOT slot={s} args=[]\"\nhalt\n"),
        );
    }
    let entries = m.tree().join("loader/entries");
    fs::create_dir_all(&entries).unwrap();
    fs::write(
        m.tree().join("loader/loader.conf"),
        "timeout 0\ndefault keel-a.conf\n",
    )
    .unwrap();
    for (s, file) in [("A", "keel-a.conf"), ("B", "keel-b+0.conf")] {
        let lower = s.to_ascii_lowercase();
        fs::write(
            entries.join(file),
            format!("title Slot {s}\nefi /EFI/keel/slot-{s}.efi\noptions mount.usr=/dev/dm-0 keel.slot={lower}\n"),
        )
        .unwrap();
    }
    let ids = ["keel-a", "keel-b"];
    let names = |tree: &Path| -> Vec<String> {
        let d = BlsDir::open(tree, &ids).unwrap();
        [Slot::A, Slot::B]
            .iter()
            .map(|&s| d.entry(s).unwrap().file_name())
            .collect()
    };
    // Boot; the choice and the entries systemd-boot renamed match Keel's model, run on a
    // copy of the ESP's tree.
    let boot_and_compare = |what: &str| -> Slot {
        let scratch = dir.path().join("predicted");
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).unwrap();
        copy_dir(&m.tree(), &scratch);
        let mut model = BlsDir::open(&scratch, &ids).unwrap();
        let predicted = model.boot().unwrap();
        let (slot, _) = m.boot();
        assert_eq!(
            Some(slot),
            predicted,
            "{what}: systemd-boot chose {slot}, Keel's model {predicted:?}"
        );
        assert_eq!(
            names(&m.tree()),
            names(&scratch),
            "{what}: the entries after the boot"
        );
        slot
    };
    let keel = |change: &dyn Fn(&mut BlsDir)| change(&mut BlsDir::open(&m.tree(), &ids).unwrap());

    assert_eq!(boot_and_compare("first boot"), Slot::A);
    // Keel arms B with two tries: systemd-boot counts them down, then falls back to A.
    keel(&|d| d.set_active(Slot::B, Some(2)).unwrap());
    assert_eq!(names(&m.tree()), ["keel-a.conf", "keel-b+2-0.conf"]);
    assert_eq!(boot_and_compare("armed B, first try"), Slot::B);
    assert_eq!(boot_and_compare("armed B, second try"), Slot::B);
    assert_eq!(boot_and_compare("B's tries spent"), Slot::A);
    assert_eq!(names(&m.tree()), ["keel-a.conf", "keel-b+0-2.conf"]);
    // Armed again, B boots and is committed (blessed): it keeps booting.
    keel(&|d| d.set_active(Slot::B, Some(2)).unwrap());
    assert_eq!(boot_and_compare("re-armed B"), Slot::B);
    keel(&|d| d.mark_good(Slot::B).unwrap());
    assert_eq!(names(&m.tree())[1], "keel-b.conf");
    assert_eq!(boot_and_compare("B committed"), Slot::B);
}
