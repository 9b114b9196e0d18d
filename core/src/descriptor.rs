//! Descriptors: the version table, SDK containers and raw payloads, and the
//! similarity a version defines.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::errors::{Error, ErrorCode, Result};

/// `b"dp\0\0"`: the signature of an SDK descriptor container.
pub const SDK_MAGIC: &[u8; 4] = b"dp\0\0";
const SDK_HEADER_LEN: usize = 8;

/// The element type of a descriptor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// One byte per element, decoded as `(q - 128) / 128`.
    U8,
    /// Little-endian IEEE 754 single precision.
    F32,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 => 4,
        }
    }
}

/// One row of the version table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// Number of elements.
    pub length: usize,
    /// The element type.
    pub dtype: Dtype,
    /// Platt calibration: similarity = sigmoid(a * cos + b). Both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<f64>,
    /// The offset `b` of the calibration; given with `a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<f64>,
}

impl VersionSpec {
    /// Bytes of a raw payload of this version.
    pub fn payload_len(&self) -> usize {
        self.length * self.dtype.size()
    }

    /// Turn a cosine into the similarity this version reports.
    pub fn calibrate(&self, cos: f64) -> f64 {
        match (self.a, self.b) {
            (Some(a), Some(b)) => 1.0 / (1.0 + (-(a * cos + b)).exp()),
            _ => cos.clamp(0.0, 1.0),
        }
    }

    /// Cosines that surely fall on either side of `similarity`: any cosine
    /// below `lo` calibrates to less than it, any at or above `hi` to at least
    /// it. With a margin far above rounding, so that a scan can decide most
    /// candidates from an approximate cosine; those in between are computed exactly.
    pub fn cosine_bounds(&self, similarity: f64) -> (f64, f64) {
        const MARGIN: f64 = 1e-9;
        let (inf, none) = (f64::INFINITY, (f64::NEG_INFINITY, f64::INFINITY));
        let cos = match (self.a, self.b) {
            _ if similarity.is_nan() => return none,
            // Every similarity reaches it.
            _ if similarity <= 0.0 => return (-inf, -inf),
            (Some(a), Some(b)) if a > 0.0 && similarity < 1.0 => ((similarity / (1.0 - similarity)).ln() - b) / a,
            // A sigmoid reaching 1.0, or a decreasing one: decide nothing early.
            (Some(_), Some(_)) => return none,
            _ if similarity > 1.0 => return (inf, inf),
            _ => similarity,
        };
        let margin = MARGIN * (1.0 + cos.abs());
        (cos - margin, cos + margin)
    }
}

/// The float version the defaults ship for open models (ArcFace and the like).
pub const DEFAULT_FLOAT_VERSION: u32 = 1000;

/// The configured descriptor versions and the default for raw payloads.
#[derive(Debug, Clone)]
pub struct Versions {
    table: BTreeMap<u32, VersionSpec>,
    default_version: u32,
}

impl Versions {
    /// Check the table (positive lengths, Platt parameters in pairs) and that it holds the default version.
    pub fn new(table: BTreeMap<u32, VersionSpec>, default_version: u32) -> std::result::Result<Self, String> {
        for (v, spec) in &table {
            if spec.length == 0 {
                return Err(format!("version {v}: length must be positive"));
            }
            if spec.a.is_some() != spec.b.is_some() {
                return Err(format!("version {v}: Platt parameters a and b go together"));
            }
        }
        if !table.contains_key(&default_version) {
            return Err(format!("default version {default_version} is not in the version table"));
        }
        Ok(Versions { table, default_version })
    }

    /// The table LUNA clients expect: face versions 59, 60, 62, 64, 65 (512 x u8),
    /// 52 (256 x u8), and one 512 x f32 version for open models.
    pub fn default_table() -> BTreeMap<u32, VersionSpec> {
        let u8_spec = |length| VersionSpec { length, dtype: Dtype::U8, a: None, b: None };
        let mut table: BTreeMap<u32, VersionSpec> = [59, 60, 62, 64, 65].into_iter().map(|v| (v, u8_spec(512))).collect();
        table.insert(52, u8_spec(256));
        table.insert(DEFAULT_FLOAT_VERSION, VersionSpec { length: 512, dtype: Dtype::F32, a: None, b: None });
        table
    }

    /// The version of a raw payload sent without one.
    pub fn default_version(&self) -> u32 {
        self.default_version
    }

    /// A version's row; unknown is error 11012 naming the known ones.
    pub fn get(&self, version: u32) -> Result<&VersionSpec> {
        self.table.get(&version).ok_or_else(|| {
            let known: Vec<String> = self.table.keys().map(u32::to_string).collect();
            Error::new(ErrorCode::UnknownDescriptorVersion, format!("version {version} is not one of {}", known.join(", ")))
        })
    }

    /// Read a descriptor from the bytes a client sent: an SDK container, or a
    /// raw payload whose version is `version` or the default.
    pub fn parse(&self, data: &[u8], version: Option<u32>) -> Result<Descriptor> {
        let (version, payload) = if data.starts_with(SDK_MAGIC) {
            if data.len() < SDK_HEADER_LEN {
                return Err(Error::new(ErrorCode::BadDescriptorLength, "SDK container is shorter than its 8-byte header"));
            }
            let inner = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
            if let Some(asked) = version.filter(|v| *v != inner) {
                return Err(Error::new(
                    ErrorCode::DescriptorVersionMismatch,
                    format!("descriptor_version {asked} does not match the container's version {inner}"),
                ));
            }
            (inner, &data[SDK_HEADER_LEN..])
        } else {
            (version.unwrap_or(self.default_version), data)
        };
        let spec = self.get(version)?;
        if payload.len() != spec.payload_len() {
            // Something that starts like a container but is not one is more likely a
            // damaged header than a raw descriptor of the wrong length.
            if !data.starts_with(SDK_MAGIC) && data.starts_with(b"dp") {
                return Err(Error::new(ErrorCode::BadDescriptorMagic, "data starts with 'dp' but not with the signature dp\\x00\\x00"));
            }
            return Err(Error::new(
                ErrorCode::BadDescriptorLength,
                format!("version {version} takes {} bytes ({} x {:?}), got {}", spec.payload_len(), spec.length, spec.dtype, payload.len()),
            ));
        }
        if spec.dtype == Dtype::F32 && payload.chunks_exact(4).any(|c| !f32::from_le_bytes(c.try_into().expect("4 bytes")).is_finite()) {
            return Err(Error::new(ErrorCode::DescriptorNotFinite, format!("version {version} descriptor holds NaN or infinity")));
        }
        Ok(Descriptor { version, payload: payload.to_vec() })
    }
}

/// A validated descriptor: its version and payload (u8 elements, or f32 little-endian).
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    /// Its row in the version table.
    pub version: u32,
    /// The elements without the SDK header.
    pub payload: Vec<u8>,
}

/// A binary field: base64 text in JSON, raw bytes in msgpack.
#[derive(Debug, Clone, PartialEq)]
pub enum Binary {
    /// Text as JSON carries it, decoded on use.
    Base64(String),
    /// Bytes as msgpack carries them.
    Bytes(Vec<u8>),
}

impl Binary {
    /// The bytes; bad base64 is error 11010.
    pub fn decode(&self) -> Result<Vec<u8>> {
        match self {
            Binary::Bytes(b) => Ok(b.clone()),
            Binary::Base64(s) => base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|e| Error::new(ErrorCode::BadBase64, e.to_string())),
        }
    }
}

// In the API documents a binary field is base64 text, as JSON carries it;
// msgpack carries the same field as raw bytes.
impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)))
            .description(Some("base64 in JSON, raw bytes in msgpack: an SDK container (dp\\0\\0, u32 LE version, payload) or a raw payload"))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

impl Serialize for Binary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Binary::Base64(text) => s.serialize_str(text),
            Binary::Bytes(bytes) => s.serialize_bytes(bytes),
        }
    }
}

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Binary;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("base64 text or binary data")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Binary, E> {
                Ok(Binary::Base64(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> std::result::Result<Binary, E> {
                Ok(Binary::Base64(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Binary, E> {
                Ok(Binary::Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> std::result::Result<Binary, E> {
                Ok(Binary::Bytes(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions() -> Versions {
        Versions::new(Versions::default_table(), 62).unwrap()
    }

    #[test]
    fn sdk_and_raw_agree() {
        let v = versions();
        let raw = vec![7u8; 512];
        let d = v.parse(&raw, Some(59)).unwrap();
        let sdk = [&SDK_MAGIC[..], &59u32.to_le_bytes(), &raw].concat();
        assert_eq!(v.parse(&sdk, None).unwrap(), d);
        assert_eq!(v.parse(&raw, None).unwrap().version, 62);
    }

    #[test]
    fn each_malformation_has_its_code() {
        let v = versions();
        let code = |r: Result<Descriptor>| r.unwrap_err().code;
        assert_eq!(code(v.parse(&[1u8; 511], None)), ErrorCode::BadDescriptorLength);
        assert_eq!(code(v.parse(&[1u8; 512], Some(7))), ErrorCode::UnknownDescriptorVersion);
        let mut damaged = b"dp\x01\x00".to_vec();
        damaged.extend_from_slice(&[0u8; 10]);
        assert_eq!(code(v.parse(&damaged, None)), ErrorCode::BadDescriptorMagic);
        let mut nan = Vec::new();
        for i in 0..512 {
            nan.extend_from_slice(&(if i == 9 { f32::NAN } else { 0.5f32 }).to_le_bytes());
        }
        assert_eq!(code(v.parse(&nan, Some(DEFAULT_FLOAT_VERSION))), ErrorCode::DescriptorNotFinite);
        assert_eq!(Binary::Base64("@@".into()).decode().unwrap_err().code, ErrorCode::BadBase64);
    }

    #[test]
    fn platt_and_clamp() {
        let plain = VersionSpec { length: 1, dtype: Dtype::U8, a: None, b: None };
        assert_eq!(plain.calibrate(-0.5), 0.0);
        assert_eq!(plain.calibrate(0.25), 0.25);
        let platt = VersionSpec { a: Some(2.0), b: Some(0.0), ..plain };
        assert!((platt.calibrate(0.0) - 0.5).abs() < 1e-12);
    }
}
