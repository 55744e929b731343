//! The fuzzer's bytes handed out as fields, shared by the targets that build
//! structured inputs (each adds its own builders in an `impl Seed` of its
//! own). Zeros once the bytes run out, so every input builds something.

pub struct Seed<'a> {
    pub bytes: &'a [u8],
}

impl Seed<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((first, rest)) => {
                self.bytes = rest;
                *first
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
}
