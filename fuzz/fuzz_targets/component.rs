//! Component identifiers: parse (wire form or bare name), print, parse again: the same
//! component, printed the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oba_httpsig::Component;

fuzz_target!(|data: &[u8]| {
    let Ok(Ok(c)) = std::str::from_utf8(data).map(str::parse::<Component>) else {
        return;
    };
    let wire = c.to_string();
    let again: Component = wire.parse().expect("printed component parses");
    assert_eq!(again, c, "{wire:?}");
    assert_eq!(again.as_str(), wire);
});
