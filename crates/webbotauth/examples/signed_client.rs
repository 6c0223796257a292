//! A bot: every request of a reqwest client is signed with Web Bot Auth.
//!
//! ```sh
//! oba keygen --out bot.jwk
//! cargo run -p oba-webbotauth --example signed_client -- bot.jwk https://bot.example https://site.example/
//! ```

use oba_httpsig::jwk::Jwk;
use oba_webbotauth::reqwest_signer::signed_client;
use oba_webbotauth::WebBotAuthSigner;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(key), Some(agent), Some(url)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: signed_client KEY.jwk SIGNATURE-AGENT-URL URL");
        std::process::exit(2);
    };
    let jwk = Jwk::parse(&std::fs::read_to_string(key)?)?;
    let signer = WebBotAuthSigner::new(&jwk)?.with_signature_agent(&agent)?;
    // The one line: every request of this client is now a signed Web Bot Auth request.
    let client = signed_client(reqwest::Client::new(), signer);
    let resp = client.get(&url).send().await?;
    println!("{}", resp.status());
    println!("{}", resp.text().await?);
    Ok(())
}
