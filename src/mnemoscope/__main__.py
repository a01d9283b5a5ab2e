from mnemoscope.cli import app

app(prog_name="mnemoscope")
