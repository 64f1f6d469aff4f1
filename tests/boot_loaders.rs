//! Proof by the real boot loaders: GRUB (UEFI, under OVMF in qemu) reads the boot state
//! Keel wrote on a disk Keel laid out, chooses the slot by its own script, counts its
//! tries in the same environment file, and agrees with keel-bootflags' model of it boot
//! after boot. The boot loader prints the slot it chose and the kernel arguments Keel
//! stored for it on the serial console, then powers the machine off; one qemu run is one
//! boot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use keel::bootflags::grubenv::GrubEnv;
use keel::bootflags::rauc::RaucGrub;
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
    mtools: (PathBuf, PathBuf),
}

fn uefi() -> Option<Uefi> {
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
    let code = file("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf")?;
    let vars = file("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf")?;
    let mkstandalone = tool("grub-mkstandalone", "grub-common")?;
    file("/usr/lib/grub/x86_64-efi/modinfo.sh", "grub-efi-amd64-bin")?;
    let mkfs = tool("mkfs.vfat", "dosfstools")?;
    let mtools = (tool("mcopy", "mtools")?, tool("mmd", "mtools")?);
    Some(Uefi {
        qemu,
        code,
        vars,
        mkstandalone,
        mkfs,
        mtools,
    })
}

/// RAUC's reference GRUB script (its integration documentation, the version that resets
/// the tries only when no slot is left), reading and saving the environment on the ESP;
/// each entry prints its slot and the kernel argument Keel stored, then powers off. The
/// serial terminal is made wide so that a long argument is printed on one line.
const RAUC_GRUB_CFG: &str = r#"serial --unit=0 --speed=115200
terminal_output serial
terminfo -g 1000x25 serial
set timeout=0
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

/// A GPT disk laid out by keel-partition, its ESP a FAT filesystem holding the boot
/// loader and Keel's environment file.
struct Machine<'u> {
    uefi: &'u Uefi,
    dir: PathBuf,
    esp: (u64, u64),
}

impl<'u> Machine<'u> {
    fn new(uefi: &'u Uefi, dir: &Path, loader_cfg: &str, env: &GrubEnv) -> Machine<'u> {
        let disk_path = dir.join("disk.img");
        let disk = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&disk_path)
            .unwrap();
        disk.set_len(ESP_BYTES + (16 << 20)).unwrap();
        let mut layout = Layout::flatcar(4 << 20);
        layout.esp_size = ESP_BYTES;
        create_layout(&mut &disk, &layout).unwrap();
        let g = GptDisk::open(&disk, None).unwrap();
        let p = g.partition_by_label("ESP").unwrap();
        let esp = (p.first_lba * g.sector_size(), p.sectors() * g.sector_size());

        fs::write(dir.join("grub.cfg"), loader_cfg).unwrap();
        let efi = dir.join("BOOTX64.EFI");
        let modules = "part_gpt fat search search_fs_file loadenv test echo halt normal configfile memdisk tar serial terminfo";
        run_ok(
            &uefi.mkstandalone,
            &[
                "-O",
                "x86_64-efi",
                "-o",
                efi.to_str().unwrap(),
                &format!("--install-modules={modules}"),
                "--modules=part_gpt fat",
                "--locales=",
                "--themes=",
                "--fonts=",
                &format!("boot/grub/grub.cfg={}", dir.join("grub.cfg").display()),
            ],
        );
        let fat = dir.join("esp.img");
        run_ok(
            &uefi.mkfs,
            &["-C", fat.to_str().unwrap(), &(ESP_BYTES / 1024).to_string()],
        );
        let img = format!("-i{}", fat.display());
        run_ok(
            &uefi.mtools.1,
            &[&img, "::/EFI", "::/EFI/BOOT", "::/EFI/keel"],
        );
        run_ok(
            &uefi.mtools.0,
            &[&img, efi.to_str().unwrap(), "::/EFI/BOOT/BOOTX64.EFI"],
        );
        let m = Machine {
            uefi,
            dir: dir.to_path_buf(),
            esp,
        };
        fs::write(dir.join("grubenv"), env.to_bytes().unwrap()).unwrap();
        run_ok(
            &uefi.mtools.0,
            &[
                &img,
                dir.join("grubenv").to_str().unwrap(),
                "::/EFI/keel/grubenv",
            ],
        );
        let bytes = fs::read(&fat).unwrap();
        Region::new(&disk, esp.0, esp.1)
            .unwrap()
            .write_all_at(&bytes, 0)
            .unwrap();
        fs::copy(&uefi.vars, dir.join("vars.fd")).unwrap();
        m
    }

    fn disk(&self) -> fs::File {
        fs::File::options()
            .read(true)
            .write(true)
            .open(self.dir.join("disk.img"))
            .unwrap()
    }

    /// Copy the ESP out of the disk, run `f` on a file taken from it and put it back.
    fn esp_file<T>(&self, name: &str, f: impl FnOnce(&Path) -> T) -> T {
        let disk = self.disk();
        let region = Region::new(&disk, self.esp.0, self.esp.1).unwrap();
        let mut bytes = vec![0u8; self.esp.1 as usize];
        region.read_exact_at(&mut bytes, 0).unwrap();
        let fat = self.dir.join("esp.img");
        fs::write(&fat, &bytes).unwrap();
        let local = self.dir.join("esp-file");
        let _ = fs::remove_file(&local);
        let img = format!("-i{}", fat.display());
        run_ok(
            &self.uefi.mtools.0,
            &[&img, &format!("::{name}"), local.to_str().unwrap()],
        );
        let before = fs::read(&local).unwrap();
        let out = f(&local);
        if fs::read(&local).unwrap() != before {
            run_ok(
                &self.uefi.mtools.0,
                &["-o", &img, local.to_str().unwrap(), &format!("::{name}")],
            );
            Region::new(&disk, self.esp.0, self.esp.1)
                .unwrap()
                .write_all_at(&fs::read(&fat).unwrap(), 0)
                .unwrap();
        }
        out
    }

    fn grubenv(&self) -> GrubEnv {
        self.esp_file("/EFI/keel/grubenv", |p| {
            GrubEnv::parse(&fs::read(p).unwrap()).unwrap()
        })
    }

    /// Keel changes the boot state (as the agent does through its BootControl).
    fn keel(&self, change: impl FnOnce(&mut RaucGrub)) {
        self.esp_file("/EFI/keel/grubenv", |p| {
            let mut rauc =
                RaucGrub::from_env(GrubEnv::parse(&fs::read(p).unwrap()).unwrap(), 2).unwrap();
            change(&mut rauc);
            fs::write(p, rauc.to_env().unwrap().to_bytes().unwrap()).unwrap();
        });
    }

    /// Power on; the boot loader chooses, prints and powers off. Returns (slot, args).
    fn boot(&self) -> (Slot, String) {
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
    let m = Machine::new(&uefi, dir.path(), RAUC_GRUB_CFG, &rauc.to_env().unwrap());

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
