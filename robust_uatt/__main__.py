from robust_uatt.cli import main

raise SystemExit(main())
