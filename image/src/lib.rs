//! attestgate's appliance image (issue 7): the host-side builder (`image build`), the qemu smoke
//! test (`image smoke`) and the guest-side first-boot parsers (`attestgate-firstboot`).
//!
//! The build uses only tools that work without loop devices, mounts or containers: mmdebstrap
//! for the root file system, `mke2fs -d` for ext4 from a directory, `mkfs.fat` + `mcopy` for the
//! EFI system partition, `sfdisk` on a plain file for the GPT, `objcopy` for the unified kernel
//! images, `grub-mkimage` for the legacy-BIOS core.img (placed and patched in Rust, see
//! `bios`), `qemu-img` for the conversions and GNU tar for the OVA and GCP archives.

pub mod bios;
pub mod build;
pub mod cmd;
pub mod convert;
pub mod disk;
pub mod firstboot;
pub mod rootfs;
pub mod smoke;
pub mod update;
pub mod updatetest;
