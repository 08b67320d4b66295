//! GeoJSON `FeatureCollection`s, parsed as a stream (one feature in memory at a time).
//!
//! Each feature becomes a row: its `properties` fill the declared columns and its geometry,
//! checked against RFC 7946, becomes the geometry column (WKT by default). A feature without a
//! geometry, with an unknown geometry type, malformed coordinates, unclosed polygon rings or
//! coordinates outside WGS 84 is a broken row. A syntax error in the document stops the read.

use std::fmt;
use std::io::BufReader;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::rows::{JsonRows, JsonSample, check_json_sample, infer_json_fields};
use super::{
    Chunk, ChunkSink, FileConnectorConfig, FileCtx, FileRef, Flow, GeoJsonOptions,
    GeometryEncoding, Layout, LimitedReader, open_file, past_end,
};
use crate::connector::BrokenRow;
use crate::error::ConnectorError;
use crate::schema::FieldSpec;

const ABORT: &str = "allmende: reading stopped";

type FeatureFn<'a> = dyn FnMut(Value) -> Result<Flow, ConnectorError> + 'a;

struct Walk<'a, 'b> {
    on_feature: &'a mut FeatureFn<'b>,
    counter: std::rc::Rc<std::cell::Cell<u64>>,
    failure: Option<ConnectorError>,
    stopped: bool,
    saw_features: bool,
    features: u64,
}

struct Top<'w, 'a, 'b>(&'w mut Walk<'a, 'b>);

impl<'de> DeserializeSeed<'de> for Top<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GeoJSON FeatureCollection object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    let t: Value = map.next_value()?;
                    if t.as_str() != Some("FeatureCollection") {
                        self.0.failure = Some(ConnectorError::Internal(format!(
                            "top-level `type` is {t}, expected `FeatureCollection`"
                        )));
                        return Err(de::Error::custom(ABORT));
                    }
                }
                "features" => {
                    map.next_value_seed(Features(&mut *self.0))?;
                    self.0.saw_features = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct Features<'w, 'a, 'b>(&'w mut Walk<'a, 'b>);

impl<'de> DeserializeSeed<'de> for Features<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Features<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of features")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        loop {
            self.0.counter.set(0);
            let Some(feature) = seq.next_element::<Value>()? else {
                return Ok(());
            };
            self.0.features += 1;
            match (self.0.on_feature)(feature) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => {
                    self.0.stopped = true;
                    return Err(de::Error::custom(ABORT));
                }
                Err(e) => {
                    self.0.failure = Some(e);
                    return Err(de::Error::custom(ABORT));
                }
            }
        }
    }
}

/// Streams the features of a file into `on_feature`.
fn walk(
    config: &FileConnectorConfig,
    file: &FileRef,
    on_feature: &mut FeatureFn<'_>,
) -> Result<(), ConnectorError> {
    let buffered = BufReader::with_capacity(64 * 1024, open_file(file)?);
    let (limited, counter) = LimitedReader::new(buffered, config.max_record_bytes);
    let mut deserializer = serde_json::Deserializer::from_reader(limited);
    let mut w = Walk {
        on_feature,
        counter,
        failure: None,
        stopped: false,
        saw_features: false,
        features: 0,
    };
    let result = Top(&mut w).deserialize(&mut deserializer);
    if let Some(e) = w.failure.take() {
        return Err(match e {
            ConnectorError::Internal(reason) => ConnectorError::source(&file.name, reason),
            other => other,
        });
    }
    if w.stopped {
        return Ok(());
    }
    if let Err(e) = result {
        let too_large = e.is_io() && e.to_string().contains(super::RECORD_TOO_LARGE);
        let reason = if too_large {
            format!(
                "feature {} is larger than {} bytes",
                w.features + 1,
                config.max_record_bytes
            )
        } else {
            format!("invalid GeoJSON: {e}")
        };
        return Err(ConnectorError::source(&file.name, reason));
    }
    deserializer
        .end()
        .map_err(|e| ConnectorError::source(&file.name, format!("invalid GeoJSON: {e}")))?;
    if !w.saw_features {
        return Err(ConnectorError::source(
            &file.name,
            "not a FeatureCollection: no `features` array",
        ));
    }
    Ok(())
}

/// The first `sample_rows` features' properties.
fn sample(config: &FileConnectorConfig, file: &FileRef) -> Result<JsonSample, ConnectorError> {
    let mut out = Vec::new();
    let limit = config.sample_rows;
    let mut on_feature = |feature: Value| {
        let n = out.len() + 1;
        if let Some(Value::Object(props)) = feature.get("properties") {
            out.push((format!("feature {n}"), props.clone()));
        } else {
            out.push((format!("feature {n}"), Map::new()));
        }
        Ok(if out.len() >= limit {
            Flow::Stop
        } else {
            Flow::Continue
        })
    };
    walk(config, file, &mut on_feature)?;
    Ok(out)
}

pub(crate) fn infer(
    config: &FileConnectorConfig,
    file: &FileRef,
) -> Result<Vec<FieldSpec>, ConnectorError> {
    let sample = sample(config, file)?;
    let fields = infer_json_fields(&file.name, &sample)?;
    let geometry = &config.geojson.geometry_column;
    if fields.iter().any(|f| &f.name == geometry) {
        return Err(ConnectorError::mismatch(
            &file.name,
            geometry,
            "is also a property name; choose another `geometry_column`",
        ));
    }
    Ok(fields)
}

pub(crate) fn validate(
    config: &FileConnectorConfig,
    layout: &Layout,
    file: &FileRef,
    with_sample: bool,
) -> Result<(), ConnectorError> {
    if !with_sample {
        open_file(file)?;
        return Ok(());
    }
    let sample = sample(config, file)?;
    let geometry = &config.geojson.geometry_column;
    if let Some((place, _)) = sample.iter().find(|(_, p)| p.contains_key(geometry)) {
        return Err(ConnectorError::mismatch(
            &file.name,
            geometry,
            format!("is also a property name (at {place}); choose another `geometry_column`"),
        ));
    }
    let properties = &layout.fields[..layout.fields.len().saturating_sub(1)];
    check_json_sample(&file.name, properties, &sample, config.ignore_extra_columns)
}

pub(crate) fn read(
    ctx: &FileCtx<'_>,
    file: &FileRef,
    skip: u64,
    sink: &mut ChunkSink<'_>,
) -> Result<(), ConnectorError> {
    let layout = ctx.layout;
    let options = &ctx.config.geojson;
    let mut rows = JsonRows::new(&layout.fields)?;
    let mut ordinal = 0u64;
    let mut ordinals = Vec::new();
    let mut broken = Vec::new();
    let mut records = 0usize;
    let mut stopped = false;
    {
        let mut flush = |rows: &mut JsonRows,
                         ordinals: &mut Vec<u64>,
                         broken: &mut Vec<BrokenRow>,
                         end: u64|
         -> Result<Flow, ConnectorError> {
            let chunk = Chunk {
                batch: rows.finish(&layout.work_schema)?,
                ordinals: std::mem::take(ordinals),
                lines: None,
                broken: std::mem::take(broken),
                end_ordinal: end,
            };
            sink(chunk)
        };
        let mut on_feature = |feature: Value| -> Result<Flow, ConnectorError> {
            ordinal += 1;
            if ordinal <= skip {
                return Ok(Flow::Continue);
            }
            records += 1;
            let outcome = feature_row(feature, options).and_then(|row| rows.push(&row));
            match outcome {
                Ok(()) => ordinals.push(ordinal),
                Err(reason) => broken.push(BrokenRow {
                    file: file.name.clone(),
                    row: ordinal,
                    line: None,
                    reason,
                }),
            }
            if records < ctx.batch_size {
                return Ok(Flow::Continue);
            }
            records = 0;
            let flow = flush(&mut rows, &mut ordinals, &mut broken, ordinal)?;
            if flow == Flow::Stop {
                stopped = true;
            }
            Ok(flow)
        };
        walk(ctx.config, file, &mut on_feature)?;
        if stopped {
            return Ok(());
        }
        if ordinal < skip {
            return Err(past_end(file, skip, ordinal));
        }
        if records > 0 {
            flush(&mut rows, &mut ordinals, &mut broken, ordinal)?;
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Turns a feature into the JSON object of its row: properties plus the encoded geometry.
fn feature_row(feature: Value, options: &GeoJsonOptions) -> Result<Map<String, Value>, String> {
    let Value::Object(mut feature) = feature else {
        return Err(format!("the feature is {}, not an object", kind(&feature)));
    };
    match feature.get("type") {
        Some(Value::String(t)) if t == "Feature" => {}
        Some(other) => return Err(format!("feature `type` is {other}, expected `Feature`")),
        None => return Err("the feature has no `type`".into()),
    }
    let geometry = match feature.remove("geometry") {
        None | Some(Value::Null) => return Err("the feature has no geometry".into()),
        Some(g) => g,
    };
    let wkt = to_wkt(&geometry, options.require_wgs84)?;
    let encoded = match options.geometry_encoding {
        GeometryEncoding::Wkt => wkt,
        GeometryEncoding::Geojson => geometry.to_string(),
    };
    let mut properties = match feature.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(other) => return Err(format!("`properties` is {}, not an object", kind(&other))),
    };
    if properties.contains_key(&options.geometry_column) {
        return Err(format!(
            "property `{}` collides with the geometry column",
            options.geometry_column
        ));
    }
    properties.insert(options.geometry_column.clone(), Value::String(encoded));
    Ok(properties)
}

/// Validates a GeoJSON geometry and renders it as WKT.
pub(crate) fn to_wkt(geometry: &Value, require_wgs84: bool) -> Result<String, String> {
    let mut w = Wkt {
        require_wgs84,
        dims: None,
    };
    w.geometry(geometry, 0)
}

struct Wkt {
    require_wgs84: bool,
    dims: Option<usize>,
}

impl Wkt {
    fn geometry(&mut self, g: &Value, depth: usize) -> Result<String, String> {
        let Some(obj) = g.as_object() else {
            return Err(format!("the geometry is {}, not an object", kind(g)));
        };
        let Some(ty) = obj.get("type").and_then(Value::as_str) else {
            return Err("the geometry has no `type`".into());
        };
        if ty == "GeometryCollection" {
            if depth >= 8 {
                return Err("geometry collections are nested too deeply".into());
            }
            let Some(members) = obj.get("geometries").and_then(Value::as_array) else {
                return Err("GeometryCollection has no `geometries` array".into());
            };
            if members.is_empty() {
                return Err("empty GeometryCollection".into());
            }
            let parts = members
                .iter()
                .map(|m| self.geometry(m, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(format!("GEOMETRYCOLLECTION ({})", parts.join(", ")));
        }
        let Some(coords) = obj.get("coordinates") else {
            return Err(format!("{ty} has no `coordinates`"));
        };
        let outer_dims = self.dims;
        self.dims = None;
        let (tag, body) = match ty {
            "Point" => ("POINT", self.position(coords)?),
            "MultiPoint" => {
                let points = self.list(coords, ty)?;
                let parts = points
                    .iter()
                    .map(|p| Ok(format!("({})", self.position(p)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                ("MULTIPOINT", parts.join(", "))
            }
            "LineString" => ("LINESTRING", self.line(coords, ty)?),
            "MultiLineString" => {
                let lines = self.list(coords, ty)?;
                let parts = lines
                    .iter()
                    .map(|l| Ok(format!("({})", self.line(l, ty)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                ("MULTILINESTRING", parts.join(", "))
            }
            "Polygon" => ("POLYGON", self.polygon(coords)?),
            "MultiPolygon" => {
                let polygons = self.list(coords, ty)?;
                let parts = polygons
                    .iter()
                    .map(|p| Ok(format!("({})", self.polygon(p)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                ("MULTIPOLYGON", parts.join(", "))
            }
            other => return Err(format!("unknown geometry type `{other}`")),
        };
        let z = if self.dims == Some(3) { " Z" } else { "" };
        self.dims = outer_dims;
        Ok(format!("{tag}{z} ({body})"))
    }

    fn list<'v>(&self, v: &'v Value, ty: &str) -> Result<&'v Vec<Value>, String> {
        match v.as_array() {
            Some(items) if !items.is_empty() => Ok(items),
            Some(_) => Err(format!("empty {ty}")),
            None => Err(format!("{ty} coordinates are {}, not an array", kind(v))),
        }
    }

    fn position(&mut self, v: &Value) -> Result<String, String> {
        let Some(items) = v.as_array() else {
            return Err(format!("a position is {}, not an array", kind(v)));
        };
        if !(2..=3).contains(&items.len()) {
            return Err(format!(
                "a position has {} numbers, expected 2 or 3",
                items.len()
            ));
        }
        let mut numbers = Vec::with_capacity(3);
        for item in items {
            match item.as_f64() {
                Some(n) if n.is_finite() => numbers.push(n),
                _ => return Err(format!("position {v} holds {}, not a number", kind(item))),
            }
        }
        match self.dims {
            None => self.dims = Some(numbers.len()),
            Some(d) if d != numbers.len() => {
                return Err("the geometry mixes 2D and 3D positions".into());
            }
            Some(_) => {}
        }
        if self.require_wgs84 && (numbers[0].abs() > 180.0 || numbers[1].abs() > 90.0) {
            return Err(format!(
                "position {v} is outside WGS 84 (longitude -180..180, latitude -90..90)"
            ));
        }
        Ok(numbers
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" "))
    }

    fn line(&mut self, v: &Value, ty: &str) -> Result<String, String> {
        let points = self.list(v, ty)?;
        if points.len() < 2 {
            return Err(format!(
                "a {ty} line needs at least 2 positions, found {}",
                points.len()
            ));
        }
        let parts = points
            .iter()
            .map(|p| self.position(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(parts.join(", "))
    }

    fn polygon(&mut self, v: &Value) -> Result<String, String> {
        let rings = self.list(v, "Polygon")?;
        let mut parts = Vec::with_capacity(rings.len());
        for (i, ring) in rings.iter().enumerate() {
            let points = self.list(ring, "Polygon ring")?;
            if points.len() < 4 {
                return Err(format!(
                    "Polygon ring {} needs at least 4 positions, found {}",
                    i + 1,
                    points.len()
                ));
            }
            if points.first() != points.last() {
                return Err(format!(
                    "Polygon ring {} is not closed (first and last position differ)",
                    i + 1
                ));
            }
            let rendered = points
                .iter()
                .map(|p| self.position(p))
                .collect::<Result<Vec<_>, _>>()?;
            parts.push(format!("({})", rendered.join(", ")));
        }
        Ok(parts.join(", "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_geometries_render_as_wkt() {
        let cases = [
            (
                json!({"type": "Point", "coordinates": [11.575, 48.137]}),
                "POINT (11.575 48.137)",
            ),
            (
                json!({"type": "Point", "coordinates": [11.5, 48.1, 520]}),
                "POINT Z (11.5 48.1 520)",
            ),
            (
                json!({"type": "LineString", "coordinates": [[11, 48], [11.5, 48.5]]}),
                "LINESTRING (11 48, 11.5 48.5)",
            ),
            (
                json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}),
                "POLYGON ((0 0, 1 0, 1 1, 0 0))",
            ),
            (
                json!({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}),
                "MULTIPOINT ((1 2), (3 4))",
            ),
            (
                json!({"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]}),
                "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)))",
            ),
            (
                json!({"type": "GeometryCollection", "geometries": [
                    {"type": "Point", "coordinates": [1, 2]},
                    {"type": "Point", "coordinates": [1, 2, 3]}
                ]}),
                "GEOMETRYCOLLECTION (POINT (1 2), POINT Z (1 2 3))",
            ),
        ];
        for (g, wkt) in cases {
            assert_eq!(to_wkt(&g, true).unwrap(), wkt);
        }
    }

    #[test]
    fn wrong_geometries_are_rejected_with_a_reason() {
        let cases = [
            (json!({"type": "Point", "coordinates": [11.5]}), "2 or 3"),
            (
                json!({"type": "Point", "coordinates": ["11", "48"]}),
                "not a number",
            ),
            (json!({"type": "Point"}), "no `coordinates`"),
            (
                json!({"type": "Circle", "coordinates": [1, 2]}),
                "unknown geometry type `Circle`",
            ),
            (
                json!({"type": "LineString", "coordinates": [[1, 2]]}),
                "at least 2",
            ),
            (
                json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}),
                "not closed",
            ),
            (
                json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}),
                "at least 4",
            ),
            (
                json!({"type": "Point", "coordinates": [691000.0, 5334000.0]}),
                "outside WGS 84",
            ),
            (
                json!({"type": "LineString", "coordinates": [[1, 2], [1, 2, 3]]}),
                "mixes 2D and 3D",
            ),
            (
                json!({"type": "MultiPoint", "coordinates": []}),
                "empty MultiPoint",
            ),
            (json!("POINT (1 2)"), "not an object"),
        ];
        for (g, reason) in cases {
            let err = to_wkt(&g, true).unwrap_err();
            assert!(err.contains(reason), "{g}: {err}");
        }
        assert!(
            to_wkt(
                &json!({"type": "Point", "coordinates": [691000.0, 5334000.0]}),
                false
            )
            .is_ok()
        );
    }
}
