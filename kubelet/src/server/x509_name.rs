//! The user a client certificate names: upstream's x509 authenticator takes the
//! subject's CommonName as user name and its Organizations as groups. rustls has
//! already verified the chain; this only reads the subject, with a minimal DER walk
//! (the certificate structure up to the subject is fixed by RFC 5280). The validity
//! period, read the same way, tells the TLS bootstrap when a client certificate expires,
//! and the subject alternative names whether a serving certificate still covers the
//! node's addresses.

/// Subject fields of interest, in certificate order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
}

/// The DNS names and IP addresses a certificate is valid for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
}

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// One DER element: its tag and contents, and the bytes after it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const EXPLICIT_VERSION: u8 = 0xa0;

/// The TBSCertificate's fields after the optional version: serial, signature
/// algorithm, issuer, validity, subject, ...
fn tbs_fields(cert_der: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(cert_der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let (tag, _, after) = element(tbs)?;
    Some(if tag == EXPLICIT_VERSION { after } else { tbs })
}

/// `(notBefore, notAfter)` of a DER certificate, as seconds since the Unix epoch.
pub fn validity(cert_der: &[u8]) -> Option<(i64, i64)> {
    let mut rest = tbs_fields(cert_der)?;
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (tag, not_before, rest) = element(validity)?;
    let not_before = asn1_time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    Some((not_before, asn1_time(tag, not_after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049 per RFC 5280) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn asn1_time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let full = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: u32 = text[..2].parse().ok()?;
            format!("{}{text}", if yy < 50 { "20" } else { "19" })
        }
        (0x18, 14) => text.to_string(),
        _ => return None,
    };
    let t = chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S").ok()?;
    Some(t.and_utc().timestamp())
}

/// Reads the subject of a DER certificate; `None` if it is not well-formed.
pub fn subject(cert_der: &[u8]) -> Option<Subject> {
    let mut rest = tbs_fields(cert_der)?;
    // serial, signature algorithm, issuer, validity, subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = element(rest)? else {
        return None;
    };
    let mut subject = Subject::default();
    while !name.is_empty() {
        let (SET, mut rdn, next) = element(name)? else {
            return None;
        };
        name = next;
        while !rdn.is_empty() {
            let (SEQUENCE, attribute, next) = element(rdn)? else {
                return None;
            };
            rdn = next;
            let (_, oid, value) = element(attribute)?;
            let (string_tag, value, _) = element(value)?;
            // UTF8String, PrintableString, TeletexString, IA5String.
            if !matches!(string_tag, 0x0c | 0x13 | 0x14 | 0x16) {
                continue;
            }
            let value = String::from_utf8_lossy(value).into_owned();
            if oid == OID_COMMON_NAME {
                subject.common_name = Some(value);
            } else if oid == OID_ORGANIZATION {
                subject.organizations.push(value);
            }
        }
    }
    Some(subject)
}

/// Reads the subjectAltName extension's DNS names and IP addresses (empty without
/// one); `None` if the certificate is not well-formed.
pub fn subject_alt_names(cert_der: &[u8]) -> Option<SubjectAltNames> {
    const EXTENSIONS: u8 = 0xa3;
    const OCTET_STRING: u8 = 0x04;
    const DNS_NAME: u8 = 0x82;
    const IP_ADDRESS: u8 = 0x87;
    let mut rest = tbs_fields(cert_der)?;
    // serial, signature algorithm, issuer, validity, subject, subjectPublicKeyInfo;
    // then the optional unique IDs ([1], [2]) and extensions ([3]).
    for _ in 0..6 {
        rest = element(rest)?.2;
    }
    let mut names = SubjectAltNames::default();
    while !rest.is_empty() {
        let (tag, value, next) = element(rest)?;
        rest = next;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut extensions, _) = element(value)? else {
            return None;
        };
        while !extensions.is_empty() {
            let (SEQUENCE, extension, next) = element(extensions)? else {
                return None;
            };
            extensions = next;
            let (_, oid, mut fields) = element(extension)?;
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            // The optional `critical` BOOLEAN, then the OCTET STRING holding the value.
            let mut octets = None;
            while !fields.is_empty() {
                let (tag, value, next) = element(fields)?;
                fields = next;
                if tag == OCTET_STRING {
                    octets = Some(value);
                }
            }
            let (SEQUENCE, mut general_names, _) = element(octets?)? else {
                return None;
            };
            while !general_names.is_empty() {
                let (tag, value, next) = element(general_names)?;
                general_names = next;
                match (tag, value.len()) {
                    (DNS_NAME, _) => names
                        .dns_names
                        .push(String::from_utf8_lossy(value).into_owned()),
                    (IP_ADDRESS, 4) => names
                        .ip_addresses
                        .push(<[u8; 4]>::try_from(value).ok()?.into()),
                    (IP_ADDRESS, 16) => names
                        .ip_addresses
                        .push(<[u8; 16]>::try_from(value).ok()?.into()),
                    _ => {}
                }
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_common_name_and_organizations() {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let s = subject(cert.der()).unwrap();
        assert_eq!(
            s.common_name.as_deref(),
            Some("kube-apiserver-kubelet-client")
        );
        assert_eq!(s.organizations, vec!["system:masters".to_string()]);
    }

    #[test]
    fn reads_the_validity() {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2051 is past UTCTime's range: GeneralizedTime, 2020 UTCTime.
        assert_eq!(validity(cert.der()), Some((1_577_923_200, 2_561_500_800)));
        assert_eq!(validity(b"\x30\x00"), None);
    }

    #[test]
    fn reads_dns_and_ip_subject_alt_names() {
        let mut params = rcgen::CertificateParams::new(vec!["node-a".into()]).unwrap();
        params.subject_alt_names.extend([
            rcgen::SanType::IpAddress("10.0.0.7".parse().unwrap()),
            rcgen::SanType::IpAddress("fd00::7".parse().unwrap()),
            rcgen::SanType::URI("spiffe://x".try_into().unwrap()),
        ]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = subject_alt_names(cert.der()).unwrap();
        assert_eq!(names.dns_names, ["node-a"]);
        assert_eq!(
            names.ip_addresses,
            [
                "10.0.0.7".parse::<std::net::IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        let bare = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            subject_alt_names(bare.der()),
            Some(SubjectAltNames::default())
        );
        assert_eq!(subject_alt_names(b"\x30\x00"), None);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(subject(b""), None);
        assert_eq!(subject(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
