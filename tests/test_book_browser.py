"""The rendered book in a real browser: headless Chromium over the DevTools protocol opens the pages of a
small site built by `alignbook book` and checks the sidebar, typeset math, loaded images and JS errors."""

import asyncio, base64, json, os, re, shutil, subprocess, tempfile, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)
SUBSET = ["00_config", "10_sft", "22_dpo", "40_flow"]  # executed: 00_config, 22_dpo (slow cells skipped)

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install chromium)"
    ),
    pytest.mark.skipif(
        any(__import__("importlib").util.find_spec(m) is None for m in ("sphinx", "myst_nb", "websockets")),
        reason="the book tools are not installed: pip install -e '.[book]'",
    ),
]


@pytest.fixture(scope="module")
def site():
    "A site of four chapters (two executed now), or the one in $ALIGNBOOK_BOOK_DIR when set."
    if os.environ.get("ALIGNBOOK_BOOK_DIR"):
        return Path(os.environ["ALIGNBOOK_BOOK_DIR"])
    from alignbook.book import build_book

    out = Path(tempfile.mkdtemp(prefix="alignbook-site-"))
    nbs = out / "nbs"
    nbs.mkdir()
    for s in SUBSET:
        shutil.copy(ROOT / "nbs" / f"{s}.ipynb", nbs)
    res = build_book(
        nbs=nbs, out=out / "_book", only=["00_config", "22_dpo"], skip=("slow",), readme=ROOT / "README.md"
    )
    assert all(r["ok"] for r in res), [r["error"] for r in res if not r["ok"]]
    return out / "_book"


PAGE_INFO = """(() => {
  const q = (s) => [...document.querySelectorAll(s)];
  const art = (document.querySelector('article') || document.body).cloneNode(true);
  art.querySelectorAll('pre, code, script, mjx-container, .MathJax').forEach(e => e.remove());
  const text = art.textContent;
  return {
    title: document.title,
    nav: q('.bd-sidebar-primary a').map(a => a.getAttribute('href')),
    math: q('.MathJax, .MathJax_Display, mjx-container').length,
    mathSource: q('.math').length,
    raw: (text.match(/\\$[^$\\s][^$]{0,80}\\$|\\\\\\(|\\\\\\[/g) || []).slice(0, 5),
    images: document.images.length,
    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    search: !!document.querySelector('form.bd-search, .search-button, input[name=q]'),
    next: !!document.querySelector('.prev-next-area a'),
  };
})()"""


def _serve(site: Path):
    "Serve `site` over HTTP on a free local port, as a static host would: (server, base URL)."
    import functools, http.server, threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/"


class Page:
    "One Chromium tab driven over the DevTools protocol."

    def __init__(self, ws):
        self.ws, self.n, self.events = ws, 0, []

    async def call(self, method, **params):
        self.n += 1
        me = self.n
        await self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def js(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")

    async def open(self, url, settle=20.0):
        self.events = []
        await self.call("Page.navigate", url=url)
        t0 = time.time()
        while time.time() - t0 < settle:
            if await self.js("document.readyState") == "complete":
                break
            await asyncio.sleep(0.2)
        mathjax = "window.MathJax && MathJax.Hub ? new Promise(r => MathJax.Hub.Queue(() => r(true))) : false"
        await asyncio.wait_for(self.js(mathjax), settle)

    def errors(self):
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("exception", {}).get("description", str(p)))
            elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        return out


async def _browse(site: Path, shots: Path, base: str) -> dict:
    import websockets

    profile = tempfile.mkdtemp(prefix="alignbook-chromium-")
    cmd = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--allow-file-access-from-files",
        "--window-size=1280,900",
        "about:blank",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "chromium did not start its DevTools endpoint"
        async with websockets.connect(url, max_size=2**26) as bws:
            browser = Page(bws)
            target = await browser.call("Target.createTarget", url="about:blank")
            page_url = url.split("/devtools/")[0] + f"/devtools/page/{target['targetId']}"
        async with websockets.connect(page_url, max_size=2**26) as ws:
            page = Page(ws)
            for dom in ("Page", "Runtime", "Log"):
                await page.call(f"{dom}.enable")
            report = {}
            pages = ["index"] + sorted(p.stem for p in site.glob("*.html") if p.stem[:1].isdigit())
            for name in pages:
                await page.open(f"{base}{name}.html")
                info = await page.js(PAGE_INFO)
                info["errors"] = page.errors()
                report[name] = info
                if name in ("22_dpo", "40_flow"):
                    shot = await page.call(
                        "Page.captureScreenshot", format="png", captureBeyondViewport=False
                    )
                    shots.mkdir(parents=True, exist_ok=True)
                    (shots / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
            return report
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_book_in_a_browser(site):
    srv, base = _serve(site)
    try:
        report = asyncio.run(_browse(site, site / "screenshots", base))
    finally:
        srv.shutdown()
    chapters = sorted(p.stem for p in site.glob("*.html") if p.stem[:1].isdigit())
    assert len(chapters) >= 4
    for name, info in report.items():
        assert not info["errors"], f"{name}: JavaScript errors {info['errors']}"
        assert not info["broken"], f"{name}: images that did not load {info['broken']}"
        assert not info["raw"], f"{name}: math left untypeset {info['raw']}"
        if info["mathSource"]:
            assert info["math"] > 0, f"{name}: has math but MathJax typeset none of it"
        linked = {Path(h.split("#")[0]).stem for h in info["nav"] if h} | {name}  # its own link is "#"
        assert set(chapters) <= linked, f"{name}: the sidebar lacks {sorted(set(chapters) - linked)}"
        assert info["search"], f"{name}: no search box"
    assert report["22_dpo"]["title"].startswith("DPO: direct preference optimisation")
    assert report["22_dpo"]["images"] > 0, "the executed DPO chapter should show its plot"
    assert report["22_dpo"]["next"], "chapters link to the previous/next chapter"
    assert (site / "screenshots" / "22_dpo.png").stat().st_size > 10_000
    assert (site / "screenshots" / "40_flow.png").exists()
