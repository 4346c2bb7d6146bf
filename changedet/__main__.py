from changedet.cli import main

raise SystemExit(main())
