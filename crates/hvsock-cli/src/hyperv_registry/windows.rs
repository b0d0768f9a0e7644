//! The [`Store`] of this machine: the Hyper-V services key in the Windows registry, through
//! `windows-sys`' wide-character registry functions, in the 64-bit view whatever the build.

use std::io;
use std::ptr;

use hvsock::ServiceId;
use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS,
    ERROR_UNSUPPORTED_TYPE, WIN32_ERROR,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_ALL_ACCESS, KEY_CREATE_SUB_KEY, KEY_READ, KEY_SET_VALUE,
    KEY_WOW64_64KEY, REG_OPTION_NON_VOLATILE, REG_SAM_FLAGS, REG_SZ, RRF_RT_REG_SZ, RegCloseKey,
    RegCreateKeyExW, RegDeleteTreeW, RegEnumKeyExW, RegGetValueW, RegOpenKeyExW, RegSetValueExW,
};

use super::{
    ELEMENT_NAME, Entry, RegistryError, SERVICES_KEY, Store, from_wide, key_name, key_path,
    parse_key_name, to_wide,
};

/// `HKLM\SOFTWARE\…\GuestCommunicationServices`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Registry;

/// An open registry key, closed on drop.
struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a key this value opened and nothing else closes.
        unsafe { RegCloseKey(self.0) };
    }
}

fn status(code: WIN32_ERROR) -> io::Result<()> {
    if code == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(code as i32))
    }
}

/// Opens the services key with `access`; a missing key means no Hyper-V here.
fn open_services(access: REG_SAM_FLAGS, doing: &str) -> Result<Key, RegistryError> {
    let path = to_wide(SERVICES_KEY);
    let mut key: HKEY = ptr::null_mut();
    // SAFETY: `path` is NUL-terminated and lives across the call; `key` is a valid out pointer.
    let code = unsafe {
        RegOpenKeyExW(
            HKEY_LOCAL_MACHINE,
            path.as_ptr(),
            0,
            access | KEY_WOW64_64KEY,
            &mut key,
        )
    };
    if code == ERROR_FILE_NOT_FOUND {
        return Err(RegistryError::NoHyperV {
            doing: doing.to_owned(),
        });
    }
    status(code).map_err(|e| RegistryError::from_os(doing, e))?;
    Ok(Key(key))
}

/// The names of the subkeys of `key`.
fn subkeys(key: &Key, doing: &str) -> Result<Vec<String>, RegistryError> {
    let mut names = Vec::new();
    // Key names are at most 255 characters.
    let mut buf = [0u16; 256];
    for index in 0.. {
        let mut len = buf.len() as u32;
        // SAFETY: `buf` holds `len` u16s and lives across the call; the optional out
        // parameters are null, as the function allows.
        let code = unsafe {
            RegEnumKeyExW(
                key.0,
                index,
                buf.as_mut_ptr(),
                &mut len,
                ptr::null(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if code == ERROR_NO_MORE_ITEMS {
            break;
        }
        status(code).map_err(|e| RegistryError::from_os(doing, e))?;
        names.push(from_wide(&buf[..(len as usize).min(buf.len())]));
    }
    Ok(names)
}

/// The `ElementName` of subkey `sub`, if it has one as a string.
fn element_name(key: &Key, sub: &str, doing: &str) -> Result<Option<String>, RegistryError> {
    let sub = to_wide(sub);
    let value = to_wide(ELEMENT_NAME);
    let mut buf: Vec<u16> = vec![0; 128];
    loop {
        let mut bytes = (buf.len() * 2) as u32;
        // SAFETY: the names are NUL-terminated and live across the call; `buf` holds `bytes`
        // bytes; the type out pointer may be null.
        let code = unsafe {
            RegGetValueW(
                key.0,
                sub.as_ptr(),
                value.as_ptr(),
                RRF_RT_REG_SZ,
                ptr::null_mut(),
                buf.as_mut_ptr().cast(),
                &mut bytes,
            )
        };
        match code {
            ERROR_SUCCESS => {
                let units = (bytes as usize / 2).min(buf.len());
                return Ok(Some(from_wide(&buf[..units])));
            }
            ERROR_MORE_DATA => buf.resize((bytes as usize).div_ceil(2) + 1, 0),
            // No ElementName, or not a string: a key without a friendly name.
            ERROR_FILE_NOT_FOUND => return Ok(None),
            ERROR_UNSUPPORTED_TYPE => return Ok(None),
            code => {
                return Err(RegistryError::from_os(
                    doing,
                    io::Error::from_raw_os_error(code as i32),
                ));
            }
        }
    }
}

/// The name of the key that holds `id`: as it is spelled in the registry if it exists,
/// else the canonical one.
fn spelled(key: &Key, id: ServiceId, doing: &str) -> Result<String, RegistryError> {
    Ok(subkeys(key, doing)?
        .into_iter()
        .find(|name| parse_key_name(name) == Some(id))
        .unwrap_or_else(|| key_name(id)))
}

impl Store for Registry {
    fn entries(&self) -> Result<Vec<Entry>, RegistryError> {
        let doing = "reading the registered services";
        let key = open_services(KEY_READ, doing)?;
        let mut entries = Vec::new();
        for sub in subkeys(&key, doing)? {
            if let Some(id) = parse_key_name(&sub) {
                entries.push(Entry {
                    id,
                    name: element_name(&key, &sub, doing)?,
                });
            }
        }
        Ok(entries)
    }

    fn write(&mut self, id: ServiceId, name: &str) -> Result<(), RegistryError> {
        let doing = format!("registering {}", key_path(id));
        let services = open_services(KEY_READ | KEY_CREATE_SUB_KEY, &doing)?;
        let sub = to_wide(&spelled(&services, id, &doing)?);
        let mut key: HKEY = ptr::null_mut();
        // SAFETY: `sub` is NUL-terminated and lives across the call; no class, default
        // security; `key` is a valid out pointer and the disposition may be null.
        let code = unsafe {
            RegCreateKeyExW(
                services.0,
                sub.as_ptr(),
                0,
                ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_SET_VALUE | KEY_WOW64_64KEY,
                ptr::null(),
                &mut key,
                ptr::null_mut(),
            )
        };
        status(code).map_err(|e| RegistryError::from_os(doing.as_str(), e))?;
        let key = Key(key);
        let value = to_wide(ELEMENT_NAME);
        let data = to_wide(name);
        // SAFETY: the value name is NUL-terminated; `data` is `data.len() * 2` bytes of a
        // NUL-terminated UTF-16 string, as REG_SZ expects; both live across the call.
        let code = unsafe {
            RegSetValueExW(
                key.0,
                value.as_ptr(),
                0,
                REG_SZ,
                data.as_ptr().cast(),
                (data.len() * 2) as u32,
            )
        };
        status(code).map_err(|e| RegistryError::from_os(doing.as_str(), e))
    }

    fn remove(&mut self, id: ServiceId) -> Result<(), RegistryError> {
        let doing = format!("deleting {}", key_path(id));
        let services = open_services(KEY_ALL_ACCESS, &doing)?;
        let sub = to_wide(&spelled(&services, id, &doing)?);
        // SAFETY: `sub` is NUL-terminated and lives across the call; `services` is open with
        // the rights RegDeleteTreeW needs (KEY_ALL_ACCESS).
        let code = unsafe { RegDeleteTreeW(services.0, sub.as_ptr()) };
        status(code).map_err(|e| RegistryError::from_os(doing.as_str(), e))
    }
}

/// Run on Windows only (compiled for Windows by the project's checks). They only read.
#[cfg(test)]
mod tests {
    use windows_sys::Win32::Foundation::ERROR_ACCESS_DENIED;

    use super::*;

    #[test]
    fn access_denied_says_run_as_administrator() {
        let err = RegistryError::from_os(
            "registering",
            io::Error::from_raw_os_error(ERROR_ACCESS_DENIED as i32),
        );
        assert!(matches!(err, RegistryError::AccessDenied { .. }), "{err}");
        assert!(err.to_string().contains("run as Administrator"), "{err}");
    }

    #[test]
    fn the_services_key_reads_or_says_there_is_no_hyper_v() {
        match Registry.entries() {
            Ok(entries) => {
                for e in entries {
                    assert_eq!(parse_key_name(&key_name(e.id)), Some(e.id));
                }
            }
            Err(RegistryError::NoHyperV { .. }) => eprintln!("no Hyper-V on this machine"),
            Err(e) => panic!("{e}"),
        }
    }
}
