//! The peer: the re-executed bench binary, driven by commands on its stdin.

use super::*;

/// Serves commands until this process's side closes the channel.
pub fn run() -> Res<()> {
    let ctl = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("taking the control channel on stdin: {e}"))?;
    let mut peer = Peer {
        current: None,
        buf: vec![0xa5; CHUNK],
    };
    loop {
        let (msg, fd) = match ctl_recv(ctl.as_fd()) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading a command: {e}").into()),
        };
        let answer = match peer.serve(&msg, fd) {
            Ok(answer) => answer.to_owned(),
            Err(e) => format!("err\n{e}"),
        };
        ctl_send(ctl.as_fd(), &answer, None).map_err(|e| format!("answering {msg:?}: {e}"))?;
    }
}

struct Peer {
    /// The connection made by the last `take`/`*-connect`, used by `send` and `echo`.
    current: Option<Box<dyn Conn>>,
    buf: Vec<u8>,
}

fn field<'a>(fields: &mut impl Iterator<Item = &'a str>, what: &str) -> Res<&'a str> {
    fields
        .next()
        .ok_or_else(|| format!("the command lacks its {what}").into())
}

fn number<'a, T: std::str::FromStr>(
    fields: &mut impl Iterator<Item = &'a str>,
    what: &str,
) -> Res<T> {
    let text = field(fields, what)?;
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not a number").into())
}

fn hv_target<'a>(fields: &mut impl Iterator<Item = &'a str>) -> Res<(Transport, SockAddrHv)> {
    let endpoint = field(fields, "endpoint")?;
    let service = field(fields, "service")?;
    let service = ServiceId::parse(service).map_err(|e| format!("service {service}: {e}"))?;
    Ok((
        Transport::provider(endpoint),
        SockAddrHv::new(VmId::PARENT, service),
    ))
}

impl Peer {
    fn serve(&mut self, msg: &str, fd: Option<OwnedFd>) -> Res<&'static str> {
        let mut fields = msg.split('\n');
        let verb = fields.next().unwrap_or_default();
        match verb {
            "take" => {
                let fd = fd.ok_or("take came without a descriptor")?;
                self.current = Some(Box::new(UnixStream::from(fd)));
                Ok("ok")
            }
            "unix-connect" => {
                let path = field(&mut fields, "path")?;
                let stream =
                    UnixStream::connect(path).map_err(|e| format!("connecting to {path}: {e}"))?;
                self.current = Some(Box::new(stream));
                Ok("ok")
            }
            "hv-connect" => {
                let (transport, addr) = hv_target(&mut fields)?;
                let stream = HvStream::connect_with(&transport, addr, TIMEOUT)
                    .map_err(|e| format!("connecting to {addr}: {e}"))?;
                self.current = Some(Box::new(stream));
                Ok("ok")
            }
            "send" => {
                let mut left: u64 = number(&mut fields, "byte count")?;
                let mut conn = self.current.take().ok_or("send without a connection")?;
                while left > 0 {
                    let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                    conn.write_all(&self.buf[..n])
                        .map_err(|e| format!("writing: {e}"))?;
                    left -= n as u64;
                }
                Ok("done")
            }
            "echo" => {
                let trips: u32 = number(&mut fields, "round-trip count")?;
                let mut conn = self.current.take().ok_or("echo without a connection")?;
                let mut byte = [0u8; 1];
                for _ in 0..trips {
                    conn.read_exact(&mut byte)
                        .map_err(|e| format!("echo: reading: {e}"))?;
                    conn.write_all(&byte)
                        .map_err(|e| format!("echo: writing: {e}"))?;
                }
                Ok("done")
            }
            "unix-setup" => {
                let path = field(&mut fields, "path")?;
                let conns: u32 = number(&mut fields, "connection count")?;
                let mut byte = [1u8; 1];
                for _ in 0..conns {
                    let mut s = UnixStream::connect(path)
                        .map_err(|e| format!("connecting to {path}: {e}"))?;
                    s.write_all(&byte)?;
                    s.read_exact(&mut byte)?;
                }
                Ok("done")
            }
            "hv-setup" => {
                let (transport, addr) = hv_target(&mut fields)?;
                let conns: u32 = number(&mut fields, "connection count")?;
                let mut byte = [1u8; 1];
                for _ in 0..conns {
                    let mut s = HvStream::connect_with(&transport, addr, TIMEOUT)
                        .map_err(|e| format!("connecting to {addr}: {e}"))?;
                    s.write_all(&byte)?;
                    s.read_exact(&mut byte)?;
                }
                Ok("done")
            }
            other => Err(format!("unknown command {other:?}").into()),
        }
    }
}
