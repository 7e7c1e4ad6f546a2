"""The web console in a real browser (Debian's chromium, driven by Playwright).

Run by crates/cli/tests/console.rs against a deployment it started with
`datafactory up`: the DataFactory with an API key, all-MiniLM-L6-v2, one
dead LLM endpoint and reranking through the reranker service (a tiny random
cross-encoder); GPU figures from a stand-in NVML library; and, with the test
PostgreSQL, a second node on PostgreSQL for the fleet:

    python3 console_browser.py BASE_URL KEY FILES_DIR DEAD_LLM_URL FLEET_URL|- PLAIN_URL [SCREENSHOT_DIR]

FILES_DIR holds sample.pdf, sample.docx, hostile.txt (markup that must stay
text), broken.pdf (a file that fails) and notes/ (a folder of three files,
one in a sub-folder). FLEET_URL is the PostgreSQL node, or `-` where there
is none; PLAIN_URL a DataFactory started by hand (not by `up`, no key). Any JavaScript error, console error (a Content-Security-Policy
violation is one) or failed step fails the run (exit 1, naming the step).
With SCREENSHOT_DIR, each view is saved there as a PNG (the ones in
docs/console/ were made so).
"""

import os
import sys

from playwright.sync_api import expect, sync_playwright

BASE, KEY, FILES, DEAD_LLM, FLEET, PLAIN = sys.argv[1:7]
FLEET = None if FLEET == "-" else FLEET
SHOTS = sys.argv[7] if len(sys.argv) > 7 else None
CHROMIUM = os.environ.get("DATAFACTORY_TEST_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 120_000  # a wait for something to appear, not a measure of speed
KEY_STEP = "the page asks for the key"
expect.set_options(timeout=TIMEOUT_MS)

problems = []
step = "start"


def shot(page, name, full_page=False):
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=full_page)


def enter_key(page):
    expect(page.locator("#key-prompt")).to_be_visible()
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-prompt")).to_be_hidden()


def on_console(m):
    # The browser logs every 401 as a failed load: expected while the page
    # finds out that it needs a key and a wrong one is tried, nowhere else.
    expected = step == KEY_STEP and "status of 401" in m.text
    if m.type == "error" and not expected:
        problems.append(f"[{step}] console error: {m.text}")


def phase_states(page):
    return page.eval_on_selector_all(".job .phases tr[data-phase]", "rows => rows.map(r => r.dataset.state)")


def main():
    global step
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", on_console)
        page.on("pageerror", lambda e: problems.append(f"[{step}] JavaScript error: {e}"))
        # A hostile document that got its markup run would set this.
        page.add_init_script("window.__pwned = 0;")

        step = KEY_STEP
        page.goto(BASE + "/")
        expect(page.locator("#key-prompt")).to_be_visible()
        expect(page.locator("#main")).to_be_hidden()
        page.fill("#key-input", "not-the-key-at-all")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#key-error")).to_contain_text("refused")
        page.fill("#key-input", KEY)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#view-search")).to_be_visible()
        expect(page.locator("#key-prompt")).to_be_hidden()

        step = "upload, then the job's phases reach succeeded"
        page.click("nav a[data-view=ingest]")
        page.fill("input[name=collection]", "console")
        page.set_input_files(
            "input[name=files]",
            [os.path.join(FILES, n) for n in ("sample.pdf", "sample.docx", "hostile.txt")],
        )
        expect(page.locator(".picked")).to_contain_text("3 file(s)")
        page.click(".ingest-form button[type=submit]")
        expect(page.locator(".upload-state[data-state=uploaded]")).to_be_visible()
        expect(page.locator(".job .badge.state-succeeded")).to_be_visible()
        states = phase_states(page)
        # Enrichment runs (heuristic stand-ins for the dead LLM); all five phases end done.
        assert states == ["done"] * 5, f"phases: {states}"
        expect(page.locator(".job")).to_contain_text("3 added")
        shot(page, "ingest")

        step = "a file that fails is named with its error"
        page.set_input_files("input[name=files]", [os.path.join(FILES, "broken.pdf")])
        page.click(".ingest-form button[type=submit]")
        expect(page.locator(".job .badge.state-completed_with_errors")).to_be_visible()
        expect(page.locator(".job .failures")).to_contain_text("upload:broken.pdf")

        step = "the jobs survive a reload (the key too: sessionStorage)"
        page.reload()
        expect(page.locator("#view-ingest")).to_be_visible()
        expect(page.locator(".jobs tr[data-job]")).to_have_count(2)
        expect(page.locator(".jobs")).to_contain_text("succeeded")

        step = "search: highlighted hits with score bars, two modes side by side"
        page.goto(BASE + "/#/search")
        page.fill("input[name=q]", "quasar")
        page.select_option("select[name=mode]", "hybrid")
        page.check("input[name=compare]")
        page.select_option("select[name=mode_b]", "lexical")
        page.select_option("select[name=rerank]", "false")
        page.click(".search-form button[type=submit]")
        expect(page.locator(".results.compare .column")).to_have_count(2)
        first = page.locator(".column[data-mode=hybrid] .hit").first
        expect(first.locator("mark").first).to_have_text("quasar", ignore_case=True)
        stages = first.locator(".scores .stage").all_inner_texts()
        assert "words" in stages and "dense" in stages and "fused" in stages, f"stages: {stages}"
        assert first.locator(".scores .bar .fill").count() >= 3
        assert first.locator(".scores .place").first.inner_text().startswith("#")
        expect(first.locator(".context .badge")).to_contain_text("heuristic")
        expect(page.locator(".column[data-mode=lexical] .hit").first.locator(".other")).to_contain_text("in hybrid")
        page.click("button.copy-curl")
        expect(page.locator("pre.curl")).to_contain_text("$DATAFACTORY_API_KEY")
        assert KEY not in page.locator("pre.curl").inner_text(), "the key itself was put in the curl command"
        shot(page, "search")

        step = "rerank: the reranker's scores as bars, in the reranker's order"
        page.goto(BASE + "/#/search?q=quasar&mode=hybrid&top_k=5&rerank=true")
        expect(page.locator(".results .message.reranked")).to_contain_text("Reranked by remote:http://127.0.0.1:")
        assert page.locator(".results .not-reranked").count() == 0
        hits = page.locator(".results .hit")
        expect(hits.first.locator(".bar.rerank .fill")).to_be_visible()
        expect(page.locator("pre.curl")).to_be_hidden()  # the last search's command is not left shown
        count = hits.count()
        assert count >= 2, f"{count} hit(s)"
        assert page.locator(".results .hit .bar.rerank").count() == count, "a hit without its rerank bar"
        values = page.eval_on_selector_all(".hit .bar.rerank + .value", "els => els.map(e => Number(e.textContent))")
        assert values == sorted(values, reverse=True), f"not in the reranker's order: {values}"
        assert "rerank" in hits.first.locator(".scores .stage").all_inner_texts()

        step = "a hit opens its document at the chunk"
        chunk = first.get_attribute("data-chunk")
        first.locator("a.title").click()
        focused = page.locator(f".chunk.focus[data-chunk='{chunk}']")
        expect(focused).to_be_visible()
        expect(focused).to_be_in_viewport()
        expect(page.locator(".analysis")).to_contain_text("manual")
        shot(page, "document")

        step = "hostile markup is shown as text and never runs"
        page.goto(BASE + "/#/search?q=pwned&mode=lexical&top_k=10")
        hostile = page.locator(".hit").first
        expect(hostile.locator(".text")).to_contain_text("<script>")
        expect(hostile.locator(".text")).to_contain_text("onerror=")
        assert hostile.locator(".text img, .text script, .text iframe").count() == 0
        hostile.locator("a.title").click()
        expect(page.locator(".chunk.focus")).to_contain_text("<img src=x")
        assert page.evaluate("window.__pwned") == 0, "markup from a document ran"

        step = "documents: the list, filtered and paged"
        page.goto(BASE + "/#/documents")
        expect(page.locator("table.documents tbody tr")).to_have_count(3)
        page.select_option(".filters-row select[name=format]", "pdf")
        page.click(".filters-row button[type=submit]")
        expect(page.locator("table.documents tbody tr")).to_have_count(1)
        expect(page.locator(".pager")).to_contain_text("1–1 of 1")
        page.goto(BASE + "/#/documents")
        expect(page.locator("table.documents tbody tr")).to_have_count(3)
        shot(page, "documents")

        step = "delete a document, after a confirmation"
        page.locator("table.documents a", has_text="Field Guide").click()
        page.click("button.danger")
        expect(page.locator(".confirm")).to_contain_text("cannot be undone")
        page.click("button[data-confirm=delete]")
        expect(page.locator(".message.ok")).to_contain_text("Deleted")
        page.goto(BASE + "/#/documents")
        expect(page.locator("table.documents tbody tr")).to_have_count(2)
        expect(page.locator("table.documents")).not_to_contain_text("Field Guide")

        step = "a folder upload: several files in one job"
        page.goto(BASE + "/#/ingest")
        page.fill("input[name=collection]", "notes")
        page.set_input_files("input[name=folder]", os.path.join(FILES, "notes"))
        expect(page.locator(".picked")).to_contain_text("3 file(s)")
        expect(page.locator(".picked")).to_contain_text("notes/deep/trenches.md")
        page.click(".ingest-form button[type=submit]")
        expect(page.locator(".upload-state[data-state=uploaded]")).to_contain_text("Uploaded 3 file(s)")
        expect(page.locator(".job .badge.state-succeeded")).to_be_visible()
        expect(page.locator(".job")).to_contain_text("3 added")
        expect(page.locator(".jobs tr[data-job]")).to_have_count(3)
        page.goto(BASE + "/#/search?q=Mariana&mode=lexical")
        expect(page.locator(".hit .source").first).to_have_text("upload:notes/deep/trenches.md")

        step = "system: the store, the embedder, the reranker, the dead LLM endpoint marked down"
        page.goto(BASE + "/#/system")
        expect(page.locator("[data-part=store]")).to_contain_text("Documents")
        expect(page.locator("[data-part=embedding]")).to_contain_text("all-MiniLM-L6-v2")
        expect(page.locator("[data-part=rerank]")).to_contain_text("remote:http://127.0.0.1:")
        expect(page.locator("[data-part=rerank] .workers tbody tr")).to_have_count(1)
        endpoint = page.locator(f"[data-part=enrichment] tr[data-url='{DEAD_LLM}']")
        expect(endpoint).to_have_attribute("data-up", "false")
        expect(endpoint.locator(".badge.down")).to_have_text("down")

        step = "system: the deployment's services and GPUs (the stand-in NVML's figures)"
        deployment = page.locator("[data-part=deployment]")
        expect(deployment).to_have_attribute("data-launched", "true")
        for name in ["datafactory", "reranker"] + (["fleet-node"] if FLEET else []):
            expect(deployment.locator(f"tr[data-service='{name}']")).to_have_attribute("data-health", "ok")
        expect(deployment.locator("tr[data-service=reranker]")).to_contain_text("rerank")
        gpu0 = deployment.locator(".gpu[data-gpu='0']")
        expect(gpu0).to_contain_text("Fake GPU 0 (test NVML shim)")
        expect(gpu0).to_contain_text("12.0 GiB of 80.0 GiB")
        expect(gpu0).to_contain_text("37 %")
        expect(gpu0).to_contain_text("51 °C")
        expect(gpu0).to_contain_text("datafactory")
        expect(deployment.locator(".gpu[data-gpu='1']")).to_contain_text("reranker")
        # It refreshes on its own: a new render replaces the refreshed line.
        first = page.locator(".refreshed").inner_text()
        expect(page.locator(".refreshed")).not_to_have_text(first)
        expect(deployment.locator(".gpu")).to_have_count(2)
        shot(page, "system", full_page=True)

        if FLEET:
            step = KEY_STEP  # another origin: the page asks again (the 401s are expected)
            page.goto(FLEET + "/#/system")
            enter_key(page)
            step = "system on the PostgreSQL node: the fleet"
            fleet = page.locator("[data-part=fleet]")
            expect(fleet).to_contain_text("Queue: 0 queued")
            expect(fleet.locator("tbody tr")).to_have_count(1)
            expect(fleet.locator("tbody tr").first).to_contain_text(FLEET.removeprefix("http://"))
            expect(fleet.locator(".badge.up")).to_have_count(1)
            expect(page.locator("[data-part=deployment] tr[data-service=fleet-node]")).to_have_attribute("data-health", "ok")

        step = "system on a DataFactory not started by `datafactory up`: no deployment, said so"
        page.goto(PLAIN + "/#/system")
        expect(page.locator("[data-part=store]")).to_contain_text("Documents")
        plain = page.locator("[data-part=deployment]")
        expect(plain).to_have_attribute("data-launched", "false")
        expect(plain).to_contain_text("Not started by `datafactory up`")
        assert plain.locator("table, .gpu").count() == 0, "a deployment shown where there is none"

        step = "the end"
        browser.close()


try:
    main()
except Exception as e:  # the step says where; the error says what
    problems.append(f"[{step}] {type(e).__name__}: {e}")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print("console: every step passed, no JavaScript or console error")
