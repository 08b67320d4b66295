//! CSV as a face of the release pipeline: the open-data listener's
//! download of a public dataset encodes the released batches as CSV (a
//! header line from the release's schema, then the rows), streamed whole
//! (not paged).

use crate::access::pipeline::{Encode, PipelineError};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

/// Encodes released batches as RFC 4180 CSV.
#[derive(Debug)]
pub struct CsvEncoder;

/// A header field, quoted where CSV needs it.
fn field(name: &str) -> String {
    if name.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    }
}

impl Encode for CsvEncoder {
    type Out = Vec<u8>;
    const PAGED: bool = false;

    fn start(schema: &SchemaRef, out: &mut Vec<u8>) -> Result<Self, PipelineError> {
        let header: Vec<String> = schema.fields().iter().map(|f| field(f.name())).collect();
        out.extend_from_slice(header.join(",").as_bytes());
        out.push(b'\n');
        Ok(Self)
    }

    fn write(&mut self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), PipelineError> {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut *out);
        w.write(batch)
            .map_err(|e| PipelineError::Arrow(e.to_string()))
    }

    fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), PipelineError> {
        Ok(())
    }

    fn size(out: &Vec<u8>) -> u64 {
        out.len() as u64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn header_then_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("station", DataType::Utf8, false),
            Field::new("a,b", DataType::Int64, false),
        ]));
        let mut out = Vec::new();
        let mut e = CsvEncoder::start(&schema, &mut out).unwrap();
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["Stachus", "Lothstraße"])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        e.write(&b, &mut out).unwrap();
        e.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "station,\"a,b\"\nStachus,1\nLothstraße,2\n"
        );
    }
}
