from textloop.cli.main import main

raise SystemExit(main())
