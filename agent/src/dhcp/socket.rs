//! The responder's I/O: one AF_PACKET socket in the agent's network
//! namespace, receiving from every device at once (the arrival ifindex says
//! which port) and sending whole frames back out of that device.
//!
//! A classic BPF filter lets only incoming, unfragmented IPv4/UDP to port 67
//! reach user space, and frames move in batches: `recvmmsg` takes up to
//! [`BATCH`] at once, `sendmmsg` sends their replies at once.

use std::{
    io,
    mem::{self, MaybeUninit},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    ptr,
    time::Duration,
};

use libc::{c_int, c_void, sock_filter, sockaddr_ll};

use super::frame::ETHERTYPE_IPV4;

/// Frames taken per system call.
pub const BATCH: usize = 64;
/// Frames are at most a port MTU plus Ethernet: a longer one is truncated
/// and counted malformed.
const FRAME_CAPACITY: usize = 2048;
/// How long a receive waits before the loop looks at its stop flag.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_millis(100);
/// Room for bursts while a batch is being answered.
const RECEIVE_BUFFER_BYTES: c_int = 4 << 20;

// Classic BPF opcodes (linux/bpf_common.h), as `sock_filter.code` takes them.
/// BPF_LD | BPF_W | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_LD | BPF_H | BPF_ABS
const BPF_LD_H_ABS: u16 = 0x28;
/// BPF_LD | BPF_B | BPF_ABS
const BPF_LD_B_ABS: u16 = 0x30;
/// BPF_LD | BPF_H | BPF_IND
const BPF_LD_H_IND: u16 = 0x48;
/// BPF_LDX | BPF_B | BPF_MSH: X = 4 * (P[k] & 0xf)
const BPF_LDX_B_MSH: u16 = 0xb1;
/// BPF_JMP | BPF_JEQ | BPF_K
const BPF_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JSET | BPF_K
const BPF_JSET_K: u16 = 0x45;
/// BPF_RET | BPF_K
const BPF_RET_K: u16 = 0x06;

const fn op(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// `not outbound and ip and udp and not ip[6:2] & 0x3fff != 0 and udp dst
/// port 67`, by hand (jump offsets count from the next instruction).
const FILTER: [sock_filter; 13] = [
    op(
        BPF_LD_W_ABS,
        (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32,
    ),
    jump(BPF_JEQ_K, libc::PACKET_OUTGOING as u32, 10, 0),
    op(BPF_LD_H_ABS, 12),
    jump(BPF_JEQ_K, ETHERTYPE_IPV4 as u32, 0, 8),
    op(BPF_LD_B_ABS, 14 + 9),
    jump(BPF_JEQ_K, libc::IPPROTO_UDP as u32, 0, 6),
    op(BPF_LD_H_ABS, 14 + 6),
    jump(BPF_JSET_K, 0x3fff, 4, 0),
    // X = the IPv4 header length.
    op(BPF_LDX_B_MSH, 14),
    op(BPF_LD_H_IND, 14 + 2),
    jump(BPF_JEQ_K, 67, 0, 1),
    op(BPF_RET_K, u32::MAX),
    op(BPF_RET_K, 0),
];

pub struct PacketSocket {
    fd: OwnedFd,
}

/// Buffers for one `recvmmsg`.
pub struct ReceiveBatch {
    frames: Vec<[u8; FRAME_CAPACITY]>,
    addresses: [sockaddr_ll; BATCH],
    lengths: [usize; BATCH],
    truncated: [bool; BATCH],
}

impl Default for ReceiveBatch {
    fn default() -> Self {
        ReceiveBatch {
            frames: vec![[0; FRAME_CAPACITY]; BATCH],
            // SAFETY: sockaddr_ll is plain data; all zeros is valid.
            addresses: unsafe { mem::zeroed() },
            lengths: [0; BATCH],
            truncated: [false; BATCH],
        }
    }
}

impl ReceiveBatch {
    /// The `index`th frame received, and the device it arrived on; `None`
    /// if it was longer than the buffer.
    pub fn frame(&self, index: usize) -> Option<(&[u8], u32)> {
        if self.truncated[index] {
            return None;
        }
        let ifindex = u32::try_from(self.addresses[index].sll_ifindex).unwrap_or(0);
        Some((&self.frames[index][..self.lengths[index]], ifindex))
    }
}

/// A whole frame (its Ethernet header says where to) to send out of a
/// device.
pub struct Outgoing<'a> {
    pub ifindex: u32,
    pub frame: &'a [u8],
}

fn check(result: c_int) -> io::Result<c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn set_option<T>(fd: &OwnedFd, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the option's size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::from_ref(value).cast::<c_void>(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

impl PacketSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<PacketSocket> {
        // Protocol 0 receives nothing until bind, so that no frame slips in
        // before the filter is attached.
        // SAFETY: plain system calls; the fd is owned from here on.
        let fd = check(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
        })?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };

        let program = libc::sock_fprog {
            len: FILTER.len() as u16,
            filter: FILTER.as_ptr().cast_mut(),
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)?;
        // Root may exceed rmem_max; otherwise settle for what is allowed.
        if set_option(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &RECEIVE_BUFFER_BYTES,
        )
        .is_err()
        {
            set_option(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &RECEIVE_BUFFER_BYTES,
            )?;
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: RECEIVE_TIMEOUT.as_micros() as libc::suseconds_t,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;

        // SAFETY: sockaddr_ll is plain data; all zeros is valid.
        let mut address: sockaddr_ll = unsafe { mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETHERTYPE_IPV4.to_be();
        // ifindex 0: every device of the namespace.
        // SAFETY: `address` is a sockaddr_ll of the size given.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                ptr::from_ref(&address).cast(),
                mem::size_of::<sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(PacketSocket { fd })
    }

    /// Waits up to [`RECEIVE_TIMEOUT`] for frames and takes those queued, up
    /// to [`BATCH`]; returns how many (0 on timeout).
    pub fn receive(&self, batch: &mut ReceiveBatch) -> io::Result<usize> {
        let mut iovecs: [MaybeUninit<libc::iovec>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: mmsghdr is plain data; all zeros is valid.
        let mut messages: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (index, message) in messages.iter_mut().enumerate() {
            let iovec = iovecs[index].write(libc::iovec {
                iov_base: batch.frames[index].as_mut_ptr().cast(),
                iov_len: FRAME_CAPACITY,
            });
            message.msg_hdr.msg_iov = iovec;
            message.msg_hdr.msg_iovlen = 1;
            message.msg_hdr.msg_name = ptr::from_mut(&mut batch.addresses[index]).cast();
            message.msg_hdr.msg_namelen = mem::size_of::<sockaddr_ll>() as libc::socklen_t;
        }
        // SAFETY: every message points at live buffers of the sizes given,
        // which outlive the call.
        let received = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        let received = match check(received) {
            Ok(count) => count as usize,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(0);
            }
            Err(error) => return Err(error),
        };
        for (index, message) in messages.iter().enumerate().take(received) {
            batch.lengths[index] = (message.msg_len as usize).min(FRAME_CAPACITY);
            batch.truncated[index] = message.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(received)
    }

    /// Sends the frames, each out of its device; `sent` learns the outcome
    /// of each, by index.
    pub fn send(&self, frames: &[Outgoing<'_>], mut sent: impl FnMut(usize, io::Result<()>)) {
        let count = frames.len().min(BATCH);
        // SAFETY: plain data; all zeros is valid.
        let mut addresses: [sockaddr_ll; BATCH] = unsafe { mem::zeroed() };
        let mut iovecs: [MaybeUninit<libc::iovec>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        let mut messages: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (index, outgoing) in frames.iter().take(count).enumerate() {
            let address = &mut addresses[index];
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = ETHERTYPE_IPV4.to_be();
            address.sll_ifindex = c_int::try_from(outgoing.ifindex).unwrap_or(0);
            let iovec = iovecs[index].write(libc::iovec {
                iov_base: outgoing.frame.as_ptr().cast_mut().cast(),
                iov_len: outgoing.frame.len(),
            });
            let header = &mut messages[index].msg_hdr;
            header.msg_iov = iovec;
            header.msg_iovlen = 1;
            header.msg_name = ptr::from_mut(address).cast();
            header.msg_namelen = mem::size_of::<sockaddr_ll>() as libc::socklen_t;
        }
        let mut next = 0;
        while next < count {
            // SAFETY: messages[next..count] point at live buffers; the kernel
            // only reads the frames.
            let result = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    messages[next..].as_mut_ptr(),
                    (count - next) as libc::c_uint,
                    0,
                )
            };
            match check(result) {
                Ok(done) => {
                    for index in next..next + done as usize {
                        sent(index, Ok(()));
                    }
                    next += (done as usize).max(1);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // The first frame failed (its device may be gone): skip it.
                Err(error) => {
                    sent(next, Err(error));
                    next += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter on a frame, as the kernel would for an incoming one.
    fn filter_accepts(frame: &[u8], outgoing: bool) -> bool {
        let mut accumulator: u32 = 0;
        let mut index_register: u32 = 0;
        let mut pc = 0;
        let load = |at: usize, size: usize| -> Option<u32> {
            let bytes = frame.get(at..at + size)?;
            Some(
                bytes
                    .iter()
                    .fold(0, |value, byte| value << 8 | u32::from(*byte)),
            )
        };
        loop {
            let instruction = FILTER[pc];
            pc += 1;
            let taken = |condition: bool| {
                usize::from(if condition {
                    instruction.jt
                } else {
                    instruction.jf
                })
            };
            match instruction.code {
                BPF_LD_W_ABS => {
                    accumulator = if outgoing {
                        libc::PACKET_OUTGOING as u32
                    } else {
                        0
                    }
                }
                BPF_LD_H_ABS => match load(instruction.k as usize, 2) {
                    Some(value) => accumulator = value,
                    None => return false,
                },
                BPF_LD_B_ABS => match load(instruction.k as usize, 1) {
                    Some(value) => accumulator = value,
                    None => return false,
                },
                BPF_LDX_B_MSH => match load(instruction.k as usize, 1) {
                    Some(value) => index_register = (value & 0xf) * 4,
                    None => return false,
                },
                BPF_LD_H_IND => match load((index_register + instruction.k) as usize, 2) {
                    Some(value) => accumulator = value,
                    None => return false,
                },
                BPF_JEQ_K => pc += taken(accumulator == instruction.k),
                BPF_JSET_K => pc += taken(accumulator & instruction.k != 0),
                BPF_RET_K => return instruction.k != 0,
                code => panic!("unexpected opcode {code:#x}"),
            }
        }
    }

    fn dhcp_frame() -> Vec<u8> {
        crate::dhcp::testing::RequestBuilder::discover(crate::dhcp::testing::CLIENT_MAC).frame(
            crate::dhcp::testing::CLIENT_MAC,
            std::net::Ipv4Addr::BROADCAST,
        )
    }

    #[test]
    fn the_filter_takes_incoming_udp_to_port_67_only() {
        let frame = dhcp_frame();
        assert!(filter_accepts(&frame, false));
        assert!(!filter_accepts(&frame, true), "outgoing");

        let mut to_68 = frame.clone();
        to_68[14 + 20 + 3] = 68;
        assert!(!filter_accepts(&to_68, false));
        let mut tcp = frame.clone();
        tcp[14 + 9] = 6;
        assert!(!filter_accepts(&tcp, false));
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!filter_accepts(&arp, false));
        let mut fragment = frame.clone();
        fragment[14 + 6] |= 0x20;
        assert!(!filter_accepts(&fragment, false));
        // IPv4 options move the UDP header: the filter follows.
        let mut with_options = frame[..14].to_vec();
        with_options.push(0x46);
        with_options.extend_from_slice(&frame[15..34]);
        with_options.extend_from_slice(&[1, 1, 1, 0]);
        with_options.extend_from_slice(&frame[34..]);
        assert!(filter_accepts(&with_options, false));
    }
}
