//! Errors as people read them.

/// The error and its causes, `a: b: c`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_datapath_error_reads_with_its_causes() {
        // A map update refused under load must say why (the errno), not
        // only which map.
        let error = crate::datapath::DatapathError::Map {
            name: "PORT_COUNTERS",
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::ENOMEM),
            }),
        };
        let text = super::chain(&error);
        assert!(
            text.starts_with("map PORT_COUNTERS: `bpf_map_update_elem` failed: ")
                && text.contains("os error 12"),
            "{text}"
        );
    }
}
