//! A model folder's `tokenizer.json` and `tokenizer_config.json` (input split in two, see
//! `echo_fuzz::split`): the tokenizer loaded and used both ways, the chat template read and
//! rendered.
#![no_main]
use echo_data::{ChatTemplate, Message, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = echo_fuzz::split(data, 2);
    let dir = echo_fuzz::scratch();
    echo_fuzz::put(&dir, "tokenizer.json", parts[0]);
    echo_fuzz::put(&dir, "tokenizer_config.json", parts[1]);
    if let Ok(tok) = Tokenizer::from_dir(&dir) {
        if let Ok(ids) = tok.encode("Below is an instruction. the correct answer is true") {
            let _ = tok.decode(&ids, true);
        }
        let _ = (tok.eos_id(), tok.pad_id(), tok.vocab_size());
    }
    if let Ok(chat) = ChatTemplate::from_dir(&dir) {
        let _ = chat.render(&[Message::new("user", "Hi"), Message::new("assistant", "Hello")], true);
    }
});
