//! The DNS server (UDP and TCP on one loopback port): queries are parsed and answers written with
//! hickory-proto; what they say comes from [`super::zone::resolve`] over Route 53's current state
//! and the local checkers' health. It answers as a resolver would for local clients (recursion
//! available: CNAME and alias targets are chased to addresses), authoritative for what it answers
//! from the zone; negative answers carry no SOA (clients do not cache them).

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::zone::{Data, Outcome};

/// Answers a name: `(name, wants addresses)` to the outcome.
pub type Resolver = dyn Fn(&str, bool) -> Outcome + Send + Sync;

/// The response to one request message (None when it cannot even be parsed).
pub fn respond(request: &[u8], resolve: &Resolver) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.queries = request.queries.clone();
    if request.metadata.op_code != OpCode::Query || request.queries.len() != 1 {
        response.metadata.authoritative = false;
        response.metadata.response_code = ResponseCode::NotImp;
        return response.to_vec().ok();
    }
    let query = &request.queries[0];
    let wants_a = matches!(query.query_type(), RecordType::A | RecordType::ANY);
    let in_class = matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
    if !in_class {
        response.metadata.authoritative = false;
        response.metadata.response_code = ResponseCode::Refused;
        return response.to_vec().ok();
    }
    match resolve(&query.name().to_ascii(), wants_a) {
        Outcome::Answers(answers) => {
            for answer in answers {
                let Ok(name) = Name::from_ascii(&answer.name) else {
                    continue;
                };
                let data = match answer.data {
                    Data::A(addr) => RData::A(A(addr)),
                    Data::Cname(target) => match Name::from_ascii(&target) {
                        Ok(t) => RData::CNAME(CNAME(t)),
                        Err(_) => continue,
                    },
                };
                response
                    .answers
                    .push(Record::from_rdata(name, answer.ttl, data));
            }
        }
        Outcome::NxDomain => response.metadata.response_code = ResponseCode::NXDomain,
        Outcome::Refused => {
            response.metadata.response_code = ResponseCode::Refused;
            response.metadata.authoritative = false;
        }
    }
    response.to_vec().ok()
}

/// Serves UDP until `stop`.
pub async fn serve_udp(socket: UdpSocket, resolve: Arc<Resolver>, stop: CancellationToken) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let (n, from): (usize, SocketAddr) = tokio::select! {
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(r) => r,
                Err(error) => {
                    tracing::debug!(%error, "DNS receive failed");
                    continue;
                }
            },
        };
        if let Some(reply) = respond(&buffer[..n], &*resolve) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// Serves TCP (two-byte length prefix per message) until `stop`.
pub async fn serve_tcp(listener: TcpListener, resolve: Arc<Resolver>, stop: CancellationToken) {
    loop {
        let mut stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let resolve = resolve.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let exchange = async {
                loop {
                    let len = stream.read_u16().await? as usize;
                    let mut message = vec![0u8; len];
                    stream.read_exact(&mut message).await?;
                    let Some(reply) = respond(&message, &*resolve) else {
                        return Ok::<_, std::io::Error>(());
                    };
                    let Ok(len) = u16::try_from(reply.len()) else {
                        return Ok(());
                    };
                    stream.write_u16(len).await?;
                    stream.write_all(&reply).await?;
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::time::timeout(std::time::Duration::from_secs(30), exchange) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use std::net::Ipv4Addr;

    #[test]
    fn answers_through_the_wire_format() {
        let resolve = |name: &str, wants_a: bool| -> Outcome {
            match name {
                "api.todos.test." => Outcome::Answers(if wants_a {
                    vec![super::super::zone::Answer {
                        name: name.into(),
                        ttl: 10,
                        data: Data::A(Ipv4Addr::new(127, 0, 0, 12)),
                    }]
                } else {
                    vec![]
                }),
                _ => Outcome::NxDomain,
            }
        };
        let ask = |name: &str, kind: RecordType| {
            let mut q = Message::query();
            q.metadata.id = 7;
            q.queries
                .push(Query::query(Name::from_ascii(name).unwrap(), kind));
            Message::from_vec(&respond(&q.to_vec().unwrap(), &resolve).unwrap()).unwrap()
        };
        let a = ask("api.todos.test.", RecordType::A);
        assert_eq!(a.metadata.id, 7);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].ttl, 10);
        assert_eq!(a.answers[0].data, RData::A(A(Ipv4Addr::new(127, 0, 0, 12))));
        let aaaa = ask("api.todos.test.", RecordType::AAAA);
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        let missing = ask("nope.todos.test.", RecordType::A);
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    }
}
