//! A machine under OVMF in qemu (TCG) on a disk Keel laid out: the ESP kept as a tree on
//! this side, made into a FAT filesystem before each boot and read back after it, so the
//! tests change it between boots and the boot loader (and what it starts) during them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel::bootflags::grubenv::GrubEnv;
use keel::bootflags::rauc::RaucGrub;
use keel::bootflags::Slot;
use keel::io::{ReadAt, Region, WriteAt};
use keel::partition::{create_layout, GptDisk, Layout};
use keel_testsupport::{file, run_ok, tool};

/// The firmware, the boot loader builder and the FAT tools (all Debian packages).
pub(crate) struct Uefi {
    qemu: PathBuf,
    code: PathBuf,
    vars: PathBuf,
    mkstandalone: PathBuf,
    mkfs: PathBuf,
    mcopy: PathBuf,
}

/// Debian's systemd-boot for x86-64 UEFI.
pub(crate) const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

pub(crate) fn uefi() -> Option<Uefi> {
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
    let code = file("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf")?;
    let vars = file("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf")?;
    let mkstandalone = tool("grub-mkstandalone", "grub-common")?;
    file("/usr/lib/grub/x86_64-efi/modinfo.sh", "grub-efi-amd64-bin")?;
    let mkfs = tool("mkfs.vfat", "dosfstools")?;
    let mcopy = tool("mcopy", "mtools")?;
    file(SYSTEMD_BOOT, "systemd-boot-efi")?;
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
pub(crate) const RAUC_SELECT: &str = r#"set timeout=0
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
"#;

/// Entries that print the slot and the kernel argument, then power off.
pub(crate) const PRINT_ENTRIES: &str = r#"menuentry "Slot A" {
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
pub(crate) struct Machine<'u> {
    uefi: &'u Uefi,
    dir: PathBuf,
    esp: (u64, u64),
    esp_bytes: u64,
}

impl<'u> Machine<'u> {
    /// A disk of an ESP of `esp_bytes` and two slots of `slot_bytes` in `dir`.
    pub(crate) fn new(uefi: &'u Uefi, dir: &Path, esp_bytes: u64, slot_bytes: u64) -> Machine<'u> {
        let disk = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("disk.img"))
            .unwrap();
        disk.set_len(esp_bytes + 2 * slot_bytes + (2 << 20))
            .unwrap();
        let mut layout = Layout::flatcar(slot_bytes);
        layout.esp_size = esp_bytes;
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
            esp_bytes,
        }
    }

    /// The image builder's slot A: `image` with its dm-verity tree after it (the tree of
    /// `d`, checked to give its root); returns the kernel argument that maps it
    /// (`dm-mod.create=` for `keel-a`).
    pub(crate) fn image_slot_a(&self, image: &[u8], d: &keel::verity::RootDescriptor) -> String {
        let disk = self.disk();
        let gpt = GptDisk::open(&disk, None).unwrap();
        let a = gpt.partition_by_label("USR-A").unwrap();
        let ss = gpt.sector_size();
        let mut slot = Region::new(&disk, a.first_lba * ss, a.sectors() * ss).unwrap();
        slot.write_all_at(image, 0).unwrap();
        let size = image.len() as u64;
        let data = Region::new(&disk, a.first_lba * ss, size).unwrap();
        let f = keel::verity::format(
            d.params(),
            &data,
            &mut slot,
            &keel::verity::FormatOptions::default().hash_offset(size),
        )
        .unwrap();
        assert_eq!(f.root_hash, d.root_hash());
        let dev = format!("PARTUUID={}", a.guid);
        let table = keel::verity::dm_table(
            d.params(),
            &f.geometry,
            &f.root_hash,
            &dev,
            &dev,
            &Default::default(),
        )
        .unwrap();
        keel::verity::dm_mod_create("keel-a", &table).unwrap()
    }

    /// The ESP's tree on this side.
    pub(crate) fn tree(&self) -> PathBuf {
        self.dir.join("esp")
    }

    /// A standalone GRUB at `to` (in the ESP tree) running `cfg`, printing on the serial
    /// port with a terminal wide enough that a long kernel argument stays on one line.
    pub(crate) fn grub(&self, to: &str, cfg: &str) {
        let cfg_file = self.dir.join("grub.cfg");
        let serial =
            "serial --unit=0 --speed=115200\nterminal_output serial\nterminfo -g 1000x25 serial\n";
        fs::write(&cfg_file, format!("{serial}{cfg}")).unwrap();
        let modules = "part_gpt fat search search_fs_file loadenv test echo halt normal \
                       configfile memdisk tar serial terminfo linux eval";
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

    /// systemd-boot as an image builder installs it: the loader, `loader.conf` (no menu),
    /// slot A's entry (good: no counter) ending with `arg_a`, and slot B's (no tries
    /// left: not armed; keel-update writes its root argument); both with `options` (the
    /// kernel arguments before the root's) and each slot's kernel and initramfs.
    pub(crate) fn systemd_boot(&self, options: &str, arg_a: &str) {
        fs::copy(SYSTEMD_BOOT, self.tree().join("EFI/BOOT/BOOTX64.EFI")).unwrap();
        let entries = self.tree().join("loader/entries");
        fs::create_dir_all(&entries).unwrap();
        fs::write(
            self.tree().join("loader/loader.conf"),
            "timeout 0\ndefault usr.a.conf\n",
        )
        .unwrap();
        for (file, slot, arg) in [("usr.a.conf", "A", arg_a), ("usr.b+0.conf", "B", "")] {
            fs::write(
                entries.join(file),
                format!(
                    "title Slot {slot}\nlinux /keel/{0}/vmlinuz\ninitrd /keel/{0}/initrd.img\n\
                     options {options} keel.slot={slot} {arg}\n",
                    slot.to_ascii_lowercase()
                ),
            )
            .unwrap();
        }
    }

    pub(crate) fn disk(&self) -> fs::File {
        fs::File::options()
            .read(true)
            .write(true)
            .open(self.dir.join("disk.img"))
            .unwrap()
    }

    /// The tree as a new FAT filesystem on the ESP.
    pub(crate) fn write_esp(&self) {
        let fat = self.dir.join("esp.img");
        let _ = fs::remove_file(&fat);
        run_ok(
            &self.uefi.mkfs,
            &[
                "-C",
                fat.to_str().unwrap(),
                &(self.esp_bytes / 1024).to_string(),
            ],
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

    /// The ESP's partition copied to a file, as mtools' `-i` argument.
    fn esp_image(&self) -> String {
        let disk = self.disk();
        let mut bytes = vec![0u8; self.esp.1 as usize];
        Region::new(&disk, self.esp.0, self.esp.1)
            .unwrap()
            .read_exact_at(&mut bytes, 0)
            .unwrap();
        let fat = self.dir.join("esp.img");
        fs::write(&fat, &bytes).unwrap();
        format!("-i{}", fat.display())
    }

    /// [`Machine::read_esp`] after a power cut: a filesystem mtools cannot read leaves
    /// the tree as it was.
    fn try_read_esp(&self) {
        let scratch = self.dir.join("esp-cut");
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).unwrap();
        let img = self.esp_image();
        let ok = Command::new(&self.uefi.mcopy)
            .args([&img, "-s", "-n", "::/*", scratch.to_str().unwrap()])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            fs::remove_dir_all(self.tree()).unwrap();
            fs::rename(&scratch, self.tree()).unwrap();
        }
    }

    /// The ESP's filesystem, as the boot loader left it, back into the tree.
    pub(crate) fn read_esp(&self) {
        let img = self.esp_image();
        fs::remove_dir_all(self.tree()).unwrap();
        fs::create_dir_all(self.tree()).unwrap();
        run_ok(
            &self.uefi.mcopy,
            &[&img, "-s", "-n", "::/*", self.tree().to_str().unwrap()],
        );
    }

    /// Power on with the tree as the ESP until the machine powers itself off; its changes
    /// come back into the tree. Returns what the serial console printed.
    pub(crate) fn power_on(&self) -> String {
        self.power_on_with(&[])
    }

    /// [`Machine::power_on`] with more qemu arguments (a network card); a machine that
    /// has not powered off after ten minutes is stopped, and the test fails with its
    /// console.
    pub(crate) fn power_on_with(&self, extra: &[&str]) -> String {
        self.power_on_until(extra, &std::sync::atomic::AtomicBool::new(false))
            .unwrap_or_else(|text| panic!("the machine ran past ten minutes:\n{text}"))
    }

    /// The serial console of the boot under way.
    pub(crate) fn console(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("serial.log")).unwrap_or_default())
            .replace('\r', "")
    }

    /// [`Machine::power_on_with`] that pulls the plug when `stop` is set (or after ten
    /// minutes): `Err(console)` then.
    pub(crate) fn power_on_until(
        &self,
        extra: &[&str],
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<String, String> {
        self.write_esp();
        let serial = self.dir.join("serial.log");
        let _ = fs::remove_file(&serial);
        let drive = |f: &str, ro: bool| {
            format!(
                "if=pflash,format=raw,{}file={f}",
                if ro { "readonly=on," } else { "" }
            )
        };
        let mut child = Command::new(&self.uefi.qemu)
            .args(["-machine", "q35", "-m", "512", "-display", "none"])
            .args(["-monitor", "none", "-no-reboot"])
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
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if std::time::Instant::now() > deadline
                || stop.load(std::sync::atomic::Ordering::SeqCst)
            {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let out = (status, err);
        let text = self.console();
        let Some(status) = out.0 else {
            // Cut off mid-run, as a power cut: the ESP as the guest left it on the disk
            // (what it had not written back is lost).
            self.try_read_esp();
            return Err(text);
        };
        assert!(status.success(), "qemu ({status}): {}\n{text}", out.1);
        self.read_esp();
        Ok(text)
    }

    /// Power on; the boot loader (or the program it starts) prints `KEEL-BOOT slot=X
    /// args=[...]` and powers off. Returns (slot, args).
    pub(crate) fn boot(&self) -> (Slot, String) {
        let text = self.power_on();
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

    pub(crate) fn grubenv(&self) -> GrubEnv {
        GrubEnv::parse(&fs::read(self.tree().join("EFI/keel/grubenv")).unwrap()).unwrap()
    }

    /// Keel changes the GRUB boot state (as the agent does through its BootControl).
    pub(crate) fn keel(&self, change: impl FnOnce(&mut RaucGrub)) {
        let mut rauc = RaucGrub::from_env(self.grubenv(), 2).unwrap();
        change(&mut rauc);
        fs::write(
            self.tree().join("EFI/keel/grubenv"),
            rauc.to_env().unwrap().to_bytes().unwrap(),
        )
        .unwrap();
    }
}

/// GRUB entries that start each slot's own kernel and initramfs (the files keel-update
/// installs with the slot, Flatcar's `vmlinuz-a`/`vmlinuz-b` way), telling it the slot and
/// passing the argument keel-update stored for it (last, so the initramfs finds the
/// table at the end of the command line). `eval`, because the argument holds quotes
/// (`dm-mod.create="..."`): expanded straight into `linux`, GRUB passes them to the
/// kernel escaped (`\"`), which the kernel does not undo; through `eval` they are
/// GRUB's own quoting again.
pub(crate) const KERNEL_ENTRIES: &str = r#"menuentry "Slot A" {
    eval "linux (\$esp)/keel/a/vmlinuz console=ttyS0 quiet panic=-1 keel.slot=A $KEEL_A_ARGS"
    initrd ($esp)/keel/a/initrd.img
}
menuentry "Slot B" {
    eval "linux (\$esp)/keel/b/vmlinuz console=ttyS0 quiet panic=-1 keel.slot=B $KEEL_B_ARGS"
    initrd ($esp)/keel/b/initrd.img
}
"#;

/// A slot image: ext4 holding `/marker` (`version=`, `healthy=`).
pub(crate) fn slot_image(dir: &Path, version: &str, healthy: bool, bytes: u64) -> Vec<u8> {
    let content = dir.join(format!("content-{version}"));
    fs::create_dir_all(&content).unwrap();
    fs::write(
        content.join("marker"),
        format!(
            "version={version}\nhealthy={}\n",
            if healthy { "yes" } else { "no" }
        ),
    )
    .unwrap();
    let img = dir.join(format!("image-{version}.ext4"));
    let mkfs = tool("mkfs.ext4", "e2fsprogs").unwrap();
    run_ok(
        &mkfs,
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-d",
            content.to_str().unwrap(),
            img.to_str().unwrap(),
            &format!("{}k", bytes / 1024),
        ],
    );
    fs::read(img).unwrap()
}

/// The dm-verity salt of the slot images.
pub(crate) const SALT: &str = "5a17";

/// The signed root's descriptor of `image` (4 KiB blocks, [`SALT`]).
pub(crate) fn descriptor(image: &[u8]) -> keel::verity::RootDescriptor {
    let params = keel::verity::VerityParams::builder()
        .salt(hex::decode(SALT).unwrap())
        .data_blocks(image.len() as u64 / 4096)
        .build()
        .unwrap();
    let root = keel::verity::HashTree::build(&params, image)
        .unwrap()
        .root_hash()
        .to_vec();
    keel::verity::RootDescriptor::new(params, &root).unwrap()
}

/// An initramfs's `/init`: map the slot the boot loader chose (`keel.slot=`) through
/// dm-verity from the `dm-mod.create=` on the command line (Debian builds dm-verity as a
/// module, so the kernel cannot map it before the initramfs), mount it read-only, print
/// `TAG slot=X initrd=V version=V healthy=yes|no` (the initramfs's `/initrd-version`, the
/// root's `/mnt/marker`), mount the ESP at /esp, then run `rest`. A slot that does not map
/// or mount prints why and powers off: the boot loader counts it as failed.
pub(crate) fn init_script(tag: &str, rest: &str) -> String {
    const PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
export DM_DISABLE_UDEV=1
i=0
while [ ! -b /dev/vda3 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
slot=$(tr -d '"' < /proc/cmdline | sed -n 's/.*keel\.slot=\([A-Z]\).*/\1/p')
slot="$slot initrd=$(cat /initrd-version)"
create=$(tr -d '"' < /proc/cmdline | sed -n 's/.*dm-mod\.create=//p')
name=${create%%,*}
table=$(echo "$create" | cut -d, -f5-)
out() { echo "@TAG@ slot=$slot $*"; sync; poweroff -f; sleep 10; }
dmsetup create "$name" --readonly --table "$table" || out "mapped=no"
mount -t ext4 -o ro "/dev/mapper/$name" /mnt || out "mounted=no"
. /mnt/marker
echo "@TAG@ slot=$slot version=$version healthy=$healthy"
mkdir -p /esp /run /etc
mount -t vfat /dev/vda1 /esp || out "esp=no"
"#;
    format!("{}{rest}", PRELUDE.replace("@TAG@", tag))
}
