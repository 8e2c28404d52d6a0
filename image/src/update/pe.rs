//! Just enough of the PE/COFF format (Microsoft, "PE Format", §"MS-DOS Stub", §"COFF File
//! Header", §"Section Table") to read and patch a unified kernel image's sections: the
//! `.cmdline` gets the target slot's root partition, and the BIOS path takes `.linux` and
//! `.initrd` out of the UKI the update carries.

use std::ops::Range;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    Format(&'static str),
    #[error("the kernel image has no {0} section")]
    Missing(String),
    #[error("the kernel image's .cmdline has no root=PARTUUID=<36-character UUID>")]
    NoRoot,
    #[error("{0:?} is not a partition UUID (8-4-4-4-12 hex digits)")]
    BadUuid(String),
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PeError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(PeError::Format("truncated header"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PeError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(PeError::Format("truncated header"))
}

/// The file range of a section's data (its raw data, cut to its virtual size: the rest is the
/// file alignment's padding).
pub fn section(image: &[u8], name: &str) -> Result<Range<usize>, PeError> {
    if image.get(..2) != Some(b"MZ") {
        return Err(PeError::Format("no MZ signature"));
    }
    let pe = u32_at(image, 0x3c)? as usize;
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::Format("no PE signature"));
    }
    let coff = pe + 4;
    let sections = u16_at(image, coff + 2)? as usize;
    let optional = u16_at(image, coff + 16)? as usize;
    let table = coff + 20 + optional;
    for i in 0..sections {
        let h = table + i * 40;
        let raw_name = image
            .get(h..h + 8)
            .ok_or(PeError::Format("truncated section table"))?;
        let end = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
        if &raw_name[..end] != name.as_bytes() {
            continue;
        }
        let virtual_size = u32_at(image, h + 8)? as usize;
        let raw_size = u32_at(image, h + 16)? as usize;
        let raw_at = u32_at(image, h + 20)? as usize;
        let len = if virtual_size == 0 {
            raw_size
        } else {
            virtual_size.min(raw_size)
        };
        let range = raw_at..raw_at.saturating_add(len);
        if range.end > image.len() {
            return Err(PeError::Format("section data beyond the end of the file"));
        }
        return Ok(range);
    }
    Err(PeError::Missing(name.into()))
}

pub fn is_partuuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The `root=PARTUUID=` of the image's command line.
pub fn root_partuuid(image: &[u8]) -> Result<String, PeError> {
    let r = section(image, ".cmdline")?;
    let at = root_at(&image[r.clone()])?;
    Ok(String::from_utf8_lossy(&image[r.start + at..r.start + at + 36]).into_owned())
}

fn root_at(cmdline: &[u8]) -> Result<usize, PeError> {
    const KEY: &[u8] = b"root=PARTUUID=";
    let at = cmdline
        .windows(KEY.len())
        .position(|w| w == KEY)
        .ok_or(PeError::NoRoot)?
        + KEY.len();
    let uuid = cmdline.get(at..at + 36).ok_or(PeError::NoRoot)?;
    if !is_partuuid(&String::from_utf8_lossy(uuid)) {
        return Err(PeError::NoRoot);
    }
    Ok(at)
}

/// Points the image's command line at another root partition, in place: a PARTUUID has a
/// fixed length, so no section moves (the UKIs are not signed; nothing else covers the bytes).
pub fn set_root_partuuid(image: &mut [u8], partuuid: &str) -> Result<(), PeError> {
    if !is_partuuid(partuuid) {
        return Err(PeError::BadUuid(partuuid.into()));
    }
    let r = section(image, ".cmdline")?;
    let at = root_at(&image[r.clone()])?;
    image[r.start + at..r.start + at + 36]
        .copy_from_slice(partuuid.to_ascii_lowercase().as_bytes());
    Ok(())
}

/// The command line, without its terminating NUL.
pub fn cmdline(image: &[u8]) -> Result<String, PeError> {
    let r = section(image, ".cmdline")?;
    let s = &image[r];
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    Ok(String::from_utf8_lossy(&s[..end]).trim().to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A minimal PE file with the given sections (name, data), laid out as objcopy does.
    pub(crate) fn synthetic(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let pe = 0x80usize;
        let optional = 0xf0usize;
        let table = pe + 4 + 20 + optional;
        let mut data_at = (table + 40 * sections.len()).div_ceil(0x200) * 0x200;
        let mut out = vec![0u8; data_at];
        out[..2].copy_from_slice(b"MZ");
        out[0x3c..0x40].copy_from_slice(&(pe as u32).to_le_bytes());
        out[pe..pe + 4].copy_from_slice(b"PE\0\0");
        out[pe + 6..pe + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out[pe + 20..pe + 22].copy_from_slice(&(optional as u16).to_le_bytes());
        for (i, (name, data)) in sections.iter().enumerate() {
            let h = table + i * 40;
            out[h..h + name.len()].copy_from_slice(name.as_bytes());
            let raw = data.len().div_ceil(0x200) * 0x200;
            out[h + 8..h + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            out[h + 12..h + 16].copy_from_slice(&(0x1000 * (i as u32 + 1)).to_le_bytes());
            out[h + 16..h + 20].copy_from_slice(&(raw as u32).to_le_bytes());
            out[h + 20..h + 24].copy_from_slice(&(data_at as u32).to_le_bytes());
            out.resize(data_at + raw, 0);
            out[data_at..data_at + data.len()].copy_from_slice(data);
            data_at += raw;
        }
        out
    }

    const UUID_A: &str = "0d2a9f6e-7d47-4c56-9f5b-2f8a1c0e9b11";
    const UUID_B: &str = "9A0B1C2D-3E4F-4A5B-8C7D-6E5F4A3B2C1D";

    fn uki() -> Vec<u8> {
        let cmdline = format!("root=PARTUUID={UUID_A} ro quiet console=ttyS0,115200\0");
        synthetic(&[
            (".text", b"code"),
            (".cmdline", cmdline.as_bytes()),
            (".linux", b"KERNEL"),
            (".initrd", b"INITRD-BYTES"),
        ])
    }

    #[test]
    fn reads_sections_and_the_root() {
        let img = uki();
        assert_eq!(&img[section(&img, ".linux").unwrap()], b"KERNEL");
        assert_eq!(&img[section(&img, ".initrd").unwrap()], b"INITRD-BYTES");
        assert_eq!(root_partuuid(&img).unwrap(), UUID_A);
        assert_eq!(
            section(&img, ".osrel"),
            Err(PeError::Missing(".osrel".into()))
        );
        assert!(cmdline(&img).unwrap().ends_with("console=ttyS0,115200"));
    }

    #[test]
    fn patches_the_root_in_place() {
        let mut img = uki();
        let len = img.len();
        set_root_partuuid(&mut img, UUID_B).unwrap();
        assert_eq!(img.len(), len);
        assert_eq!(root_partuuid(&img).unwrap(), UUID_B.to_ascii_lowercase());
        assert_eq!(
            cmdline(&img).unwrap(),
            format!(
                "root=PARTUUID={} ro quiet console=ttyS0,115200",
                UUID_B.to_ascii_lowercase()
            )
        );
        // everything else is untouched
        assert_eq!(&img[section(&img, ".linux").unwrap()], b"KERNEL");
        assert!(matches!(
            set_root_partuuid(&mut img, "not-a-uuid"),
            Err(PeError::BadUuid(_))
        ));
    }

    #[test]
    fn bad_images_are_refused_without_panicking() {
        assert!(section(b"", ".cmdline").is_err());
        assert!(section(b"MZ", ".cmdline").is_err());
        let img = uki();
        for cut in [0x3e, 0x82, 0x90, 0x100, 0x190, 0x210] {
            assert!(section(&img[..cut], ".initrd").is_err(), "cut at {cut}");
        }
        let mut lying = img.clone();
        // the first section claims data far beyond the file
        let table = 0x80 + 4 + 20 + 0xf0;
        lying[table + 20..table + 24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(section(&lying, ".text").is_err());
        let no_root = synthetic(&[(".cmdline", b"ro quiet\0")]);
        assert_eq!(root_partuuid(&no_root), Err(PeError::NoRoot));
        let short = synthetic(&[(".cmdline", b"root=PARTUUID=1234\0")]);
        assert_eq!(root_partuuid(&short), Err(PeError::NoRoot));
    }
}
